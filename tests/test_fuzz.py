"""Property-based fuzzing through the real server: random values, types and shapes for our nodes' inputs.

Bounded and reproducible: a fixed number of examples per test, no deadline (the server's timing varies),
derandomized (the same examples on every run, in CI too). Every example must end in one of: success, ComfyUI's
own refusal in /prompt's node_errors (names the node and the input), or our node's "[MegaPortrait <node>] ...
Fix: ..." message; and the server must keep serving.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import bad_server, fa, g_load_lora, g_photos, load, preview, submit  # noqa: F401

pytestmark = pytest.mark.server

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# any JSON value a client could send for a widget
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                         st.sampled_from(["false", "true", "nan", "inf", "-1", "1e309", "", "0", "..", "ｆｕｌｌ"]))
json_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=5), json_scalars, max_size=2))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10 ** 6, max_value=10 ** 6))


def assert_clear(server, graph):
    kind, payload = submit(server, graph)
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    assert server.client.alive(), "the server stopped answering"
    if kind == "invalid":
        assert payload, payload
        text = str(payload).lower()
        assert "error" in text or "invalid" in text, payload
    elif kind == "error":
        assert "[MegaPortrait " in payload and " Fix: " in payload, f"not a clear error: {payload}"
    return kind


@st.composite
def map_graphs(draw):
    """Light / HF / Recombine on random image shapes (size, batch, 1-4 channels), numbers, modes and masks."""
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    batch = draw(st.integers(1, 3))
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": batch,
                                                      "color": draw(st.integers(0, 0xFFFFFF))}}}
    src = ["1", 0]
    if draw(st.booleans()):             # RGBA
        g["7"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": w, "height": h}}
        g["8"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["7", 0]}}
        src = ["8", 0]
    kind = draw(st.sampled_from(["MegaPortraitLightMap", "MegaPortraitHFMap", "MegaPortraitRecombineMaps"]))
    if kind == "MegaPortraitRecombineMaps":
        g["2"] = {"class_type": kind, "inputs": {"light_map": src, "hf_map": ["1", 0], "gain": draw(numbers)}}
    else:
        inputs = {"image": src, "sigma": draw(numbers),
                  "sigma_mode": draw(st.sampled_from(["relative to 512 px", "pixels", "inches"])),
                  "filter_type": draw(st.sampled_from(["gaussian", "box", "median"]))}
        if kind == "MegaPortraitHFMap":
            inputs["gain"] = draw(numbers)
            inputs["encoding"] = draw(st.sampled_from(["signed", "magnitude", "other"]))
        if draw(st.booleans()):
            mw = draw(st.sampled_from([w, max(1, w // 2), w + 3]))
            g["9"] = {"class_type": "SolidMask", "inputs": {"value": draw(st.floats(0, 1)), "width": mw, "height": h}}
            inputs["mask"] = ["9", 0]
        g["2"] = {"class_type": kind, "inputs": inputs}
    g["3"] = preview(["2", 0])
    return g


@FUZZ
@given(graph=map_graphs())
def test_fuzz_map_nodes(bad_server, graph):  # noqa: F811
    assert_clear(bad_server, graph)


# one widget of one of our nodes set to any JSON value (the rest valid)
WIDGET_GRAPHS = {
    "Light Map": (lambda: {"1": load("mp_bad_gray.png"), "2": {"class_type": "MegaPortraitLightMap", "inputs": {
        "image": ["1", 0], "sigma": 2.0, "sigma_mode": "pixels", "filter_type": "gaussian"}},
        "3": preview(["2", 0])}, "2", ("sigma", "sigma_mode", "filter_type")),
    "Load Source Photos": (lambda: g_photos("mp_bad/mixed"), "1",
                           ("folder", "filenames", "resolution", "face_scale", "min_photos", "seed")),
    "Face Analysis Loader": (lambda: {"1": load("astronaut.png"), "2": fa(), "3": {
        "class_type": "MegaPortraitFaceSimilarity", "inputs": {"face_analysis": ["2", 0], "image_a": ["1", 0],
                                                               "image_b": ["1", 0]}}}, "2",
        ("det_threshold", "det_size", "refine_landmarks", "min_face", "landmarks", "backend")),
    "Load Identity LoRA": (lambda: g_load_lora("tiny_lora.safetensors"), "1",
                           ("strength_model", "strength_clip", "lora_name")),
}


@FUZZ
@given(which=st.sampled_from(sorted(WIDGET_GRAPHS)), data=st.data())
def test_fuzz_widget_values_of_any_type(bad_server, which, data):  # noqa: F811
    make, node_id, widgets = WIDGET_GRAPHS[which]
    graph = make()
    name = data.draw(st.sampled_from(widgets))
    value = data.draw(json_values)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        value = [value[0], value[1], 0]       # would read as a link [node, output]: keep it a value
    graph[node_id]["inputs"][name] = value
    assert_clear(bad_server, graph)
