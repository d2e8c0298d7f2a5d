"""Face backends behind one interface that says what each can do (issue 21, item 3).

A backend without identity embeddings (e.g. a landmark-only detector such as a MediaPipe face landmarker) is a
BackendSpec whose Capabilities say so: detection and cropping work with it, and every identity feature refuses it
with a message naming the node, before any work."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor


@pytest.fixture(scope="module")
def F(pack):
    from comfyui_megaportrait.nodes import face_analysis, face_crop, source_photos
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class NS:
        fa, fc, sp, Error = face_analysis, face_crop, source_photos, MegaPortraitError
    return NS


@pytest.fixture(scope="module")
def landmarks_only(F):
    """A backend that finds faces and landmarks but has no identity embeddings: dlib's detector and landmark
    predictor, declared without embeddings (so the refusals below come from the declaration, not a missing
    method)."""
    fa = F.fa

    class DetectOnly(fa._DlibBackend):
        can = fa.Capabilities(detect=True, landmarks=True, embeddings=False)

    spec = fa.BackendSpec("landmarks only (test)", DetectOnly.can, lambda a: (a.landmarks, a.refine_landmarks),
                          lambda a: DetectOnly(a.node, a.landmarks, a.refine_landmarks),
                          lambda a, b: "dlib detection and landmarks, no identity")
    fa.register_backend(spec)
    yield fa.FaceAnalyzer(backend=spec.name).load()
    del fa.BACKEND_SPECS[spec.name]


@pytest.fixture(scope="module")
def astronaut():
    return image_tensor(os.path.join(EXAMPLES, "astronaut.png"))


def test_the_shipped_backends_say_what_they_can(F):
    for name in F.fa.BACKENDS:
        can = F.fa.BACKEND_SPECS[name].can
        assert (can.detect, can.landmarks, can.embeddings) == (True, True, True), name
    assert F.fa.FaceAnalyzer().can.embeddings           # known without loading any model
    assert F.fa.Capabilities(embeddings=False).describe() == "detection, landmarks"
    with pytest.raises(F.Error, match="unknown face backend 'mediapipe'.*dlib"):
        F.fa.FaceAnalyzer(backend="mediapipe").load()


def test_a_backend_without_embeddings_crops_faces(F, landmarks_only, astronaut):
    crops, fc = F.fc.FaceCropNode().crop(landmarks_only, astronaut, 256, 0.25, "largest", 0, 48)
    dlib_crops, dlib_fc = F.fc.FaceCropNode().crop(F.fa.FaceAnalyzer().load(), astronaut, 256, 0.25, "largest", 0, 48)
    assert crops.shape == (1, 256, 256, 3) and torch.equal(crops, dlib_crops)   # the same detector and landmarks
    assert np.allclose(fc[0].matrix, dlib_fc[0].matrix)


def test_identity_features_refuse_a_backend_without_embeddings(F, landmarks_only, astronaut):
    msg = "needs identity embeddings, but the face backend 'landmarks only \\(test\\)' has none.*Fix: choose a backend"
    with pytest.raises(F.Error, match=r"\[MegaPortrait Face Similarity\] .*" + msg):
        F.fa.FaceSimilarity().compare(landmarks_only, astronaut, astronaut)
    with pytest.raises(F.Error, match=r"\[MegaPortrait Select Best Identity\] .*" + msg):
        F.fa.SelectBestIdentity().select(landmarks_only, astronaut, astronaut)
    with pytest.raises(F.Error, match=r"\[MegaPortrait Face Crop\] .*" + msg):
        F.fc.FaceCropNode().crop(landmarks_only, astronaut, 256, 0.25, "most similar to identity", 0, 48, astronaut)
    with pytest.raises(F.Error, match=r"\[MegaPortrait Load Source Photos\] identity_check.*" + msg):
        F.sp.square_photos("Load Source Photos", [astronaut[0]] * 2, 128, landmarks_only,
                           identity_check=F.sp.IDENTITY_CHECKS[0])
    with pytest.raises(F.Error, match=msg):              # the analyzer itself, whoever asks
        landmarks_only.embed(np.zeros((64, 64, 3), np.uint8), landmarks_only.detect(
            (astronaut[0].numpy() * 255).astype(np.uint8))[0])
