"""The zoo's training scripts are deterministic: the same seed gives the same weights and metric."""
import pytest
import torch


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_digits_training_reruns_identically():
    from backendiff.models.train_digits import train

    torch.set_num_threads(1)
    (m1, acc1), (m2, acc2) = train(4, epochs=2), train(4, epochs=2)
    assert _same_weights(m1, m2) and acc1 == acc2 and acc1 > 0.5     # two epochs already learn


def test_mspn_training_reruns_identically():
    from backendiff.models.train_mspn import train

    torch.set_num_threads(1)
    (m1, s1), (m2, s2) = (train(samples=192, epochs=1, log=None) for _ in range(2))
    assert _same_weights(m1, m2) and s1 == s2


@pytest.mark.slow
def test_full_training_reproduces_the_committed_scores():
    """Retrain both zoo models from scratch (several minutes) and land within 0.5 points of the
    scores of the committed weights."""
    import backendiff
    from backendiff.models.train_digits import train as train_digits
    from backendiff.models.train_mspn import train as train_mspn

    torch.set_num_threads(1)
    committed = backendiff.compare("zoo:digits-cnn", backends=["torch"]).task["reference"]
    _, acc = train_digits(16)
    assert abs(100 * acc - committed) <= 0.5
    committed = backendiff.compare("zoo:mspn-tiny", backends=["torch"]).task["reference"]
    _, scores = train_mspn(log=None)
    assert abs(scores["pck@0.1"] - committed) <= 0.5


@pytest.mark.slow
def test_full_photo_patches_training_reproduces_the_committed_score():
    """Retrain zoo:photo-patches from scratch (about 1.5 minutes on one thread) and land within
    0.5 points of the committed weights' held-out top-1."""
    pytest.importorskip("skimage")
    import backendiff
    from backendiff.models.train_photo_patches import train

    torch.set_num_threads(1)
    committed = backendiff.compare("zoo:photo-patches", backends=["torch"]).task["reference"]
    _, acc = train(log=None)
    assert abs(100 * acc - committed) <= 0.5
