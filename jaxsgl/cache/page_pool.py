"""PagePool: a free list of KV page indices (host only, no JAX).

The device holds KV as one array of `num_pages` pages of `page_size` tokens each;
this pool only hands out and takes back the *indices* of those pages. A page is
either free (in the pool) or allocated (owned by a request or by the radix tree).

With `reserve_dummy_page=True`, page 0 is never handed out, so padded KV writes
and padded page-table rows (PAD_PAGE == 0) can point at it harmlessly.
"""
from __future__ import annotations

from collections.abc import Iterable


class PagePool:
    """Free list of page indices with double-free and foreign-page detection."""

    def __init__(self, num_pages: int, page_size: int = 1, *, reserve_dummy_page: bool = False) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        first = 1 if reserve_dummy_page else 0
        if num_pages - first < 1:
            raise ValueError(f"num_pages={num_pages} leaves no usable page (reserve_dummy_page={reserve_dummy_page})")
        self.num_pages = num_pages
        self.page_size = page_size
        self.reserve_dummy_page = reserve_dummy_page
        self._first_page = first
        # Pop from the end; reversed so that the first allocations get low indices.
        self._free: list[int] = list(range(num_pages - 1, first - 1, -1))
        self._is_free = bytearray(num_pages)
        for p in self._free:
            self._is_free[p] = 1

    @property
    def capacity(self) -> int:
        """Number of pages that can ever be allocated (excludes the dummy page)."""
        return self.num_pages - self._first_page

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_allocated(self) -> int:
        return self.capacity - len(self._free)

    def usable_pages(self) -> range:
        """All page indices this pool manages."""
        return range(self._first_page, self.num_pages)

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold num_tokens tokens."""
        return -(-num_tokens // self.page_size)

    def alloc(self, n: int) -> list[int] | None:
        """Take n free pages (mutates the free list); None, taking nothing, if fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        for p in pages:
            self._is_free[p] = 0
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """Return pages to the free list. Raises ValueError on a double free or a foreign page."""
        pages = list(pages)
        for p in pages:
            if not (self._first_page <= p < self.num_pages):
                raise ValueError(f"page {p} is not managed by this pool")
            if self._is_free[p]:
                raise ValueError(f"double free of page {p}")
            self._is_free[p] = 1
        self._free.extend(pages)

    def is_free(self, page: int) -> bool:
        return bool(self._is_free[page])

    def free_pages(self) -> list[int]:
        """A copy of the free list (for integrity checks and debugging)."""
        return list(self._free)

    def check_integrity(self) -> None:
        """Raise AssertionError if the free list has duplicates or disagrees with the free flags."""
        assert len(set(self._free)) == len(self._free), "duplicate page in the free list"
        assert all(self._first_page <= p < self.num_pages for p in self._free), "foreign page in the free list"
        assert sum(self._is_free) == len(self._free), "free flags disagree with the free list"
        if self.reserve_dummy_page:
            assert not self._is_free[0], "dummy page 0 is in the free list"
