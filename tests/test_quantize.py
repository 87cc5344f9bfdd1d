import numpy as np

from facenet.gallery.quantize import dequantize, quantize


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sq_dist(a, b):
    return ((a[:, None] - b[None]) ** 2).sum(-1)


def test_one_byte_per_dimension():
    codes = quantize(unit(np.random.default_rng(0).standard_normal((5, 128))))
    assert codes.dtype == np.int8 and codes.shape == (5, 128) and codes[0].nbytes == 128


def test_distances_preserved_on_random_unit_vectors():
    x = unit(np.random.default_rng(1).standard_normal((600, 128)))
    back = dequantize(quantize(x))
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1, atol=1e-5)
    err = np.abs(sq_dist(x[:300], x[300:]) - sq_dist(back[:300], back[300:]))
    assert err.mean() < 0.006 and err.max() < 0.04


def test_identities_preserved_on_clustered_anisotropic_data():
    """Real-like: identity centres on an anisotropic sphere plus per-photo noise."""
    rng = np.random.default_rng(2)
    d = 128
    centres = unit(rng.standard_normal((100, d)) * (1 / np.arange(1, d + 1) ** 0.4))
    labels = rng.integers(0, 100, 1000)
    x = unit(centres[labels] + 0.06 * rng.standard_normal((1000, d)))
    back = dequantize(quantize(x))
    exact = sq_dist(x, centres).argmin(1)
    quant = sq_dist(back, centres).argmin(1)
    assert (exact == labels).mean() > 0.99
    assert (quant == exact).mean() > 0.99
    # nearest neighbour among photos mostly unchanged
    d_x, d_q = sq_dist(x[:200], x[200:]), sq_dist(back[:200], back[200:])
    assert (d_x.argmin(1) == d_q.argmin(1)).mean() > 0.95


def test_large_components_saturate_instead_of_wrapping():
    x = np.zeros((1, 4), np.float32)
    x[0, 0] = 1.0
    codes = quantize(x)
    assert codes[0, 0] == 127
    np.testing.assert_allclose(dequantize(codes), x, atol=1e-6)
    assert quantize(-x)[0, 0] == -127
