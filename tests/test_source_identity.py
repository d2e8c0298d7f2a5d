"""Identity sanity of the source photos (pure function): which photo is the outlier."""
import numpy as np


def test_identity_outliers(pack):
    from comfyui_megaportrait.nodes.source_photos import identity_outliers
    same = np.array([[0, .3, .35, .8], [.3, 0, .4, .75], [.35, .4, 0, .7], [.8, .75, .7, 0]])
    assert [(i, j) for i, _, j in identity_outliers(same, 0.6)] == [(3, 2)]
    four = np.full((4, 4), 0.9) - np.eye(4) * 0.9          # four different people: every photo is named
    assert [i for i, _, _ in identity_outliers(four, 0.6)] == [0, 1, 2, 3]
    assert identity_outliers(np.zeros((1, 1)), 0.6) == []
    assert identity_outliers(np.array([[0, .2], [.2, 0]]), 0.6) == []
