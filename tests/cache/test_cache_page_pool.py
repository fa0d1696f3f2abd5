"""PagePool: allocation, double free, dummy page."""
import pytest

from jaxsgl.cache import PagePool


def test_alloc_and_free_round_trip():
    pool = PagePool(8, page_size=4)
    assert pool.capacity == 8 and pool.num_free == 8
    pages = pool.alloc(3)
    assert len(set(pages)) == 3 and pool.num_free == 5 and pool.num_allocated == 3
    assert pool.alloc(6) is None and pool.num_free == 5  # all or nothing
    pool.free(pages)
    assert pool.num_free == 8
    pool.check_integrity()
    assert pool.pages_for(9) == 3 and pool.pages_for(8) == 2 and pool.pages_for(0) == 0


def test_double_free_and_foreign_page_raise():
    pool = PagePool(4)
    (p,) = pool.alloc(1)
    pool.free([p])
    with pytest.raises(ValueError, match="double free"):
        pool.free([p])
    with pytest.raises(ValueError, match="not managed"):
        pool.free([99])


def test_dummy_page_is_never_handed_out():
    pool = PagePool(5, reserve_dummy_page=True)
    assert pool.capacity == 4
    pages = pool.alloc(4)
    assert 0 not in pages and pool.alloc(1) is None
    with pytest.raises(ValueError):
        pool.free([0])
    pool.free(pages)
    pool.check_integrity()


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        PagePool(1, reserve_dummy_page=True)
    with pytest.raises(ValueError):
        PagePool(4, page_size=0)
