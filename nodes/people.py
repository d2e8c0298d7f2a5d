"""Several people in one group photo: every face re-rendered with the identity model of the person it is.

A person is a name, the MODEL that carries their identity LoRA (trained once, as for one person), the identity
of their photos (the mean face embedding) and, optionally, their own prompt CONDITIONING (a LoRA that patches the
text encoder too gives each person their own prompt) and LoRA file name (for Harmonize's inpaint_model).
"Add Person" nodes chain into a PEOPLE bundle; "Assign Faces to People" decides, for every crop of Face Crop,
whose face it is:

* explicitly, by face number (``assignment``: "0=alice, 2=bob"; 0 = the leftmost crop), and for the other faces
* by identity: the person whose photos are nearest (the backend's distance), when nearer than ``threshold``;
* a face of nobody known is left untouched (dropped from the batch, so Paste Back never touches it) or given the
  default person, as the user chooses.

It outputs the faces to re-render, their FACE_CROP and the PEOPLE with that per-face assignment. The samplers
(Dual-Strength Identity Sampler, Shading ControlNet Sampler) and Harmonize take that PEOPLE on their optional
``people`` input: they sample each person's faces with that person's MODEL (and prompt), and Harmonize samples
each part of the seam mask with the model of the person whose face it surrounds. Per-face models inside the
pack's own nodes work on every host (early-2024 ComfyUI has no LoRA hooks per conditioning); a LoRA is applied
the stock way (Load Identity LoRA or the trainer's MODEL output), never patched here.

PEOPLE is the pack's own type, as FACE_CROP is: no stock type carries named MODELs with their identities. It
holds references to the MODELs (never copies) and is not meant to be saved.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from .common import CATEGORY, TITLES, MegaPortraitError, check_choice, check_number

UNKNOWN_MODES = ("leave untouched", "default person")
MATCH_MODES = ("by identity", "by index only")


@dataclass(frozen=True)
class Person:
    name: str
    model: object                       # a ComfyUI MODEL (with the person's identity LoRA)
    embedding: np.ndarray               # mean identity embedding of the person's photos
    positive: list | None = None        # the person's own prompt (CONDITIONING), or None: the sampler's
    lora_name: str | None = None        # the LoRA file (for Harmonize's inpaint_model), or None
    photos: int = 0


@dataclass(frozen=True)
class People:
    """PEOPLE: the persons, and (after Assign Faces to People) whose each crop of the face batch is.

    ``faces[i]``: index into ``persons`` of crop i; ``places[i]``: (image index, x, y) of its face centre in the
    group photo (Harmonize finds which person a seam belongs to by it)."""
    persons: tuple = ()
    faces: tuple = ()
    places: tuple = ()

    @property
    def assigned(self) -> bool:
        return len(self.faces) > 0

    def names(self) -> list[str]:
        return [p.name for p in self.persons]


def add_person(node: str, people: People | None, person: Person) -> People:
    """``people`` with ``person`` appended (a new bundle; the old one is not changed)."""
    people = People() if people is None else people
    if not isinstance(people, People):
        raise MegaPortraitError(node, "'people' is not a PEOPLE.", "connect another Add Person node, or nothing.")
    if people.assigned:
        raise MegaPortraitError(node, "'people' comes from Assign Faces to People (it has faces assigned already).",
                                "chain Add Person nodes first and assign faces after the last one.")
    name = person.name.strip()
    if not name:
        raise MegaPortraitError(node, "the person has no name.", "give every person a name (e.g. alice).")
    if not re.fullmatch(r"[^\s=,;#]+", name) or name.isdigit():
        raise MegaPortraitError(node, f"name {name!r} has spaces or one of = , ; # or is a number.",
                                "use one word, e.g. alice or bob_2 (face assignments name people by it).")
    if name.lower() in (n.lower() for n in people.names()):
        raise MegaPortraitError(node, f"there is already a person named {name!r}.", "give every person its own name.")
    return People(persons=people.persons + (replace(person, name=name),))


def parse_assignment(node: str, text: str, people: People, n_faces: int) -> dict[int, int]:
    """{face number: person index} of a text such as "0=alice, 2=bob" (commas, semicolons or new lines between
    entries; a person by name, case-insensitive, or by number in the order added, 0 = first)."""
    out: dict[int, int] = {}
    names = [n.lower() for n in people.names()]
    for entry in re.split(r"[,;\n]+", text or ""):
        entry = entry.strip()
        if not entry:
            continue
        m = re.fullmatch(r"(\d+)\s*[=:]\s*(\S+)", entry)
        if not m:
            raise MegaPortraitError(node, f"assignment entry {entry!r} is not 'face=person'.",
                                    "write e.g. '0=alice, 2=bob' (0 = the leftmost face of Face Crop).")
        face, who = int(m.group(1)), m.group(2)
        if face >= n_faces:
            raise MegaPortraitError(node, f"assignment names face {face} but Face Crop gave {n_faces} face(s).",
                                    f"use face numbers 0 to {n_faces - 1} (left to right).")
        if who.isdigit():
            k = int(who)
            if k >= len(names):
                raise MegaPortraitError(node, f"assignment names person {k} but there are {len(names)}.",
                                        f"use a name ({', '.join(people.names())}) or a number below {len(names)}.")
        elif who.lower() in names:
            k = names.index(who.lower())
        else:
            raise MegaPortraitError(node, f"assignment names {who!r}, who is not in 'people'.",
                                    f"use one of: {', '.join(people.names())}.")
        if face in out and out[face] != k:
            raise MegaPortraitError(node, f"face {face} is assigned twice.", "give every face one person.")
        out[face] = k
    return out


def assign(distances: np.ndarray | None, threshold: float, explicit: dict[int, int], n_faces: int, unknown: str,
           default: int | None) -> list[int | None]:
    """Whose each face is: the explicit entry, else (with ``distances`` [faces, persons]) the nearest person when
    nearer than ``threshold``, else ``default`` (None: nobody, the face is left untouched)."""
    out: list[int | None] = []
    for i in range(n_faces):
        if i in explicit:
            out.append(explicit[i])
            continue
        k = None
        if distances is not None and distances.shape[1]:
            j = int(np.argmin(distances[i]))
            if distances[i, j] < threshold:
                k = j
        out.append(k if k is not None else (default if unknown == "default person" else None))
    return out


def groups(node: str, people, n: int, what: str) -> list[tuple[Person, list[int]]]:
    """[(person, the batch items that are theirs)] in the order of each person's first item, for a batch of ``n``
    items (one per face of Assign Faces to People)."""
    if not isinstance(people, People):
        raise MegaPortraitError(node, "'people' is not a PEOPLE.", "connect the people output of Assign Faces to People.")
    if not people.assigned:
        raise MegaPortraitError(node, "'people' has no faces assigned (it comes straight from Add Person).",
                                "connect the people output of Assign Faces to People.")
    if len(people.faces) != n:
        raise MegaPortraitError(node, f"'people' assigns {len(people.faces)} face(s) but {what} has a batch of {n}.",
                                "use the faces and the people of the same Assign Faces to People node.")
    order: dict[int, list[int]] = {}
    for i, k in enumerate(people.faces):
        order.setdefault(int(k), []).append(i)
    return [(people.persons[k], idx) for k, idx in order.items()]


def pick(x, idx: list[int]):
    """Items ``idx`` of a batch tensor (a batch of one is everyone's), or of a LATENT dict (its noise mask too)."""
    if isinstance(x, dict):
        out = dict(x)
        for k in ("samples", "noise_mask"):
            if k in out and out[k] is not None:
                out[k] = pick(out[k], idx)
        out.pop("batch_index", None)
        return out
    if x is None or x.shape[0] == 1:
        return x
    import torch
    return x.index_select(0, torch.tensor(idx, dtype=torch.long, device=x.device))


def scatter(parts: list, n: int):
    """The batch of ``n`` items put together from [(idx, tensor of len(idx) items)] (the inverse of :func:`pick`)."""
    import torch
    first = parts[0][1]
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for idx, t in parts:
        out[torch.tensor(idx, dtype=torch.long, device=out.device)] = t.to(out.device, out.dtype)
    return out


def per_person(node: str, people, model, positive, n: int, what: str, sample_one, *batches) -> tuple:
    """``sample_one(model, positive, *batches) -> (tensor, ...)`` (each of the batch's ``n`` items) on the whole
    batch, or, with ``people``, on each person's items with their MODEL and prompt (else ``positive``), each of
    ``batches`` (tensors, LATENTs or None) picked to those items (:func:`pick`), the outputs put back together in the
    batch's order (:func:`scatter`)."""
    if people is None:
        return sample_one(model, positive, *batches)
    parts = [(idx, sample_one(person.model, person.positive or positive, *(pick(b, idx) for b in batches)))
             for person, idx in groups(node, people, n, what)]
    return tuple(scatter([(idx, out[k]) for idx, out in parts], n) for k in range(len(parts[0][1])))


def person_of_part(people: People, image_index: int, part_box: tuple[int, int, int, int]) -> Person | None:
    """The person whose face centre (in image ``image_index``) is nearest to the centre of a mask part's box (a
    seam surrounds its face); None when no face of that image is assigned."""
    x0, y0, x1, y1 = part_box
    c = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    best, best_d = None, float("inf")
    for k, (img, x, y) in zip(people.faces, people.places):
        if int(img) != int(image_index):
            continue
        d = float(np.hypot(x - c[0], y - c[1]))
        if d < best_d:
            best, best_d = people.persons[int(k)], d
    return best


# ----------------------------------------------------------------------------------------------- nodes
def face_distances(node: str, analyzer, image, face_crop, people: People) -> np.ndarray:
    """[faces, persons] identity distance of every crop's face (embedded in the group photo, where it was found)
    to every person's photos."""
    from .face_analysis import Face
    from .image_ops import to_uint8_rgb
    analyzer.require_embeddings(node, "matching faces to people by identity")
    d = np.zeros((len(face_crop), len(people.persons)))
    cache: dict[int, np.ndarray] = {}
    for i, info in enumerate(face_crop.items):
        b = face_crop.image_index(i)
        if b not in cache:
            cache[b] = to_uint8_rgb(image[b])
        face = Face(bbox=np.asarray(info.bbox, np.float64), score=1.0, landmarks=np.asarray(info.landmarks, np.float64),
                    kind=info.kind)
        e = analyzer.embed(cache[b], face)
        d[i] = [analyzer.distance(p.embedding, e) for p in people.persons]
    return d


def assign_faces(node: str, analyzer, image, face, face_crop, people: People, match: str, threshold: float,
                 unknown: str, default_person: str, assignment: str):
    """(faces to re-render, their FACE_CROP, PEOPLE with the assignment, report lines)."""
    import torch

    from .common import check_image
    from .face_crop import FaceCrop
    check_choice(node, "match", match, MATCH_MODES)
    check_choice(node, "unknown_faces", unknown, UNKNOWN_MODES)
    if not isinstance(people, People) or not people.persons:
        raise MegaPortraitError(node, "'people' is not a PEOPLE with at least one person.", "connect an Add Person node.")
    if people.assigned:
        raise MegaPortraitError(node, "'people' has faces assigned already.", "connect the last Add Person node.")
    if not isinstance(face_crop, FaceCrop) or len(face_crop) == 0:
        raise MegaPortraitError(node, "'face_crop' is not a FACE_CROP.", "connect the face_crop output of Face Crop.")
    image, face = check_image(node, image, "image"), check_image(node, face, "face")
    n = len(face_crop)
    if face.shape[0] != n:
        raise MegaPortraitError(node, f"{face.shape[0]} face(s) for {n} crop(s).", "connect Face Crop's two outputs.")
    if image.shape[0] != face_crop.n_references or any(tuple(i.image_size) != tuple(image.shape[1:3])
                                                       for i in face_crop.items):
        raise MegaPortraitError(node, "'image' is not the image that went into Face Crop.",
                                "connect the group photo that Face Crop cropped.")
    explicit = parse_assignment(node, assignment, people, n)
    default = None
    if unknown == "default person":
        names = [p.lower() for p in people.names()]
        want = (default_person or "").strip().lower()
        if want and want not in names:
            raise MegaPortraitError(node, f"default_person {default_person!r} is not in 'people'.",
                                    f"use one of: {', '.join(people.names())} (empty: the first).")
        default = names.index(want) if want else 0
    dist, thr = None, None
    if match == "by identity" and len(explicit) < n:
        dist = face_distances(node, analyzer, image, face_crop, people)
        thr = threshold if threshold > 0 else analyzer.threshold
    who = assign(dist, thr or 0.0, explicit, n, unknown, default)
    lines = [f"{len(people.persons)} people: {', '.join(people.names())}" + (f"; threshold {thr:.3f} ({analyzer.metric})"
                                                                              if thr else "")]
    for i, k in enumerate(who):
        info = face_crop.items[i]
        cx = float(np.mean(info.landmarks[:, 0]))
        how = "assigned" if i in explicit else ("nearest" if k is not None and dist is not None and
                                                 dist[i, k] < thr else ("default" if k is not None else "unknown"))
        ds = "" if dist is None else " (" + ", ".join(f"{p.name} {dist[i, j]:.3f}"
                                                      for j, p in enumerate(people.persons)) + ")"
        lines.append(f"face {i} (x={cx:.0f}): {people.persons[k].name if k is not None else 'nobody: left untouched'}"
                     f" [{how}]{ds}")
    keep = [i for i, k in enumerate(who) if k is not None]
    if not keep:
        raise MegaPortraitError(node, f"none of the {n} face(s) is one of the people ({', '.join(people.names())}); "
                                      "all would be left untouched.",
                                "raise threshold, assign faces by number, or set unknown_faces to 'default person'. "
                                + " | ".join(lines[1:]))
    fc = FaceCrop([face_crop.items[i] for i in keep], references=face_crop.n_references)
    places = tuple((face_crop.image_index(i), float(np.mean(face_crop.items[i].landmarks[:, 0])),
                    float(np.mean(face_crop.items[i].landmarks[:, 1]))) for i in keep)
    out = People(persons=people.persons, faces=tuple(int(who[i]) for i in keep), places=places)
    idx = torch.tensor(keep, dtype=torch.long, device=face.device)
    return face.index_select(0, idx), fc, out, lines


class AddPerson:
    DESCRIPTION = ("One person of a group photo: a name, the MODEL with their identity LoRA and their photos (whose "
                   "identity finds their faces). Chain one Add Person per person, then Assign Faces to People.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("PEOPLE",)
    RETURN_NAMES = ("people",)
    OUTPUT_TOOLTIPS = ("The people so far, this one last: into the next Add Person or Assign Faces to People.",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From the Face Analysis Loader (a backend with identity "
                                                           "embeddings: dlib or insightface)."}),
            "name": ("STRING", {"default": "alice", "tooltip": "One word naming the person (face assignments and "
                                                               "reports use it)."}),
            "model": ("MODEL", {"tooltip": "The model with this person's identity LoRA (the trainer's MODEL output, or "
                                           "Load Identity LoRA)."}),
            "photos": ("IMAGE", {"tooltip": "Photos of this person (e.g. Load Source Photos): their mean identity finds "
                                            "their faces."}),
        }, "optional": {
            "people": ("PEOPLE", {"tooltip": "The people added before (another Add Person); empty for the first."}),
            "positive": ("CONDITIONING", {"tooltip": "This person's own prompt (encoded with the CLIP that carries their "
                                                     "LoRA); empty: the samplers' positive input."}),
            "lora_name": ("STRING", {"forceInput": True, "tooltip": "This person's LoRA file (the trainer's lora_name), "
                                     "for Harmonize's inpaint_model."}),
        }}

    def add(self, face_analysis, name, model, photos, people=None, positive=None, lora_name=None):
        node = TITLES["MegaPortraitAddPerson"]
        from .face_analysis import FaceAnalyzer, identity_embedding
        if not isinstance(face_analysis, FaceAnalyzer):
            raise MegaPortraitError(node, "'face_analysis' is not a FACE_ANALYSIS.", "connect a Face Analysis Loader.")
        if not hasattr(model, "model_options"):
            raise MegaPortraitError(node, "'model' is not a MODEL.", "connect a MODEL output (e.g. Load Identity LoRA).")
        add_person(node, people, Person(str(name), model, np.zeros(1)))     # name and chain checks before the work
        emb = identity_embedding(node, face_analysis, photos, "photos")
        person = Person(str(name), model, emb, positive, lora_name or None, int(photos.shape[0]))
        return (add_person(node, people, person),)


class AssignFacesToPeople:
    DESCRIPTION = ("Says whose each face of the group photo is: by face number ('0=alice, 2=bob') and otherwise by "
                   "identity (the person whose photos are nearest, within threshold). A face of nobody known is left "
                   "untouched or given the default person. Outputs the faces to re-render, their FACE_CROP, and the "
                   "people with the assignment for the samplers and Harmonize.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("IMAGE", "FACE_CROP", "PEOPLE", "STRING")
    RETURN_NAMES = ("face", "face_crop", "people", "report")
    OUTPUT_TOOLTIPS = ("The faces to re-render (Face Crop's, without those left untouched), in order.",
                       "Their FACE_CROP: connect it to Paste Back.",
                       "The people with whose each face is: connect it to the samplers' and Harmonize's 'people'.",
                       "Whose each face is, and the identity distances.")
    FUNCTION = "assign"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "The loader Face Crop used."}),
            "people": ("PEOPLE", {"tooltip": "From the last Add Person."}),
            "image": ("IMAGE", {"tooltip": "The group photo that went into Face Crop."}),
            "face": ("IMAGE", {"tooltip": "Face Crop's face output (every face, left to right)."}),
            "face_crop": ("FACE_CROP", {"tooltip": "Face Crop's face_crop output."}),
            "match": (list(MATCH_MODES), {"default": "by identity", "tooltip":
                      "by identity: faces not in 'assignment' go to the person whose photos are nearest (within "
                      "threshold). by index only: only the faces in 'assignment' are anybody's."}),
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4.0, "step": 0.01, "tooltip":
                          "Largest identity distance that still counts as that person; 0 = the backend's usual "
                          "same-person threshold (dlib 0.6, insightface 0.65)."}),
            "unknown_faces": (list(UNKNOWN_MODES), {"default": "leave untouched", "tooltip":
                              "A face of nobody known: left exactly as it is, or re-rendered as default_person."}),
            "default_person": ("STRING", {"default": "", "tooltip": "Name of the person unknown faces become with "
                                                                    "'default person' (empty: the first person)."}),
            "assignment": ("STRING", {"default": "", "multiline": True, "tooltip":
                           "Explicit face -> person entries, e.g. '0=alice, 2=bob' (0 = the leftmost face of Face "
                           "Crop; a person by name or number, 0 = first added). They win over identity."}),
        }}

    def assign(self, face_analysis, people, image, face, face_crop, match, threshold, unknown_faces, default_person,
               assignment):
        node = TITLES["MegaPortraitAssignFacesToPeople"]
        from .face_analysis import FaceAnalyzer
        if not isinstance(face_analysis, FaceAnalyzer):
            raise MegaPortraitError(node, "'face_analysis' is not a FACE_ANALYSIS.", "connect a Face Analysis Loader.")
        threshold = check_number(node, "threshold", threshold, 0.0, 4.0)
        faces, fc, out, lines = assign_faces(node, face_analysis, image, face, face_crop, people, match, threshold,
                                             unknown_faces, str(default_person), str(assignment))
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (faces, fc, out, text)}


PEOPLE_INPUT = ("PEOPLE", {"tooltip": "Several people in one photo: Assign Faces to People's people. Each face of the "
                                      "batch is then sampled with its person's MODEL (and prompt, when the person has "
                                      "one) instead of 'model'."})

NODE_CLASS_MAPPINGS = {"MegaPortraitAddPerson": AddPerson, "MegaPortraitAssignFacesToPeople": AssignFacesToPeople}
