"""Merkle tree: roots and proofs against an independent RFC 6962 style implementation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_proof,
    verify_inclusion,
)
from ledger.store import LedgerIntegrityError


def _h(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, recursively, with SHA3-256."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return _h(b"\x00" + leaves[0])
    k = _split(len(leaves))
    return _h(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:]))


def reference_path(m: int, leaves: list[bytes]) -> list[tuple[bytes, bool]]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), leaf to root, with the side of each sibling."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*reference_path(m, leaves[:k]), (reference_root(leaves[k:]), False)]
    return [*reference_path(m - k, leaves[k:]), (reference_root(leaves[:k]), True)]


def _leaves(n: int) -> list[bytes]:
    return [f"tx-{i}".encode() * (i % 3 + 1) for i in range(n)]


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_hashes_are_domain_tagged():
    assert leaf_hash(b"a") == _h(b"\x00a")
    assert node_hash(b"l" * 32, b"r" * 32) == _h(b"\x01" + b"l" * 32 + b"r" * 32)
    assert EMPTY_ROOT == merkle_root([]) == _h(b"")


@pytest.mark.parametrize("n", range(1, 34))
def test_root_and_every_proof_match_the_reference(n):
    leaves = _leaves(n)
    root = merkle_root(leaves)
    assert root == reference_root(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        assert proof == reference_path(index, leaves)
        assert len(proof) <= (n - 1).bit_length()
        verify_inclusion(leaf, proof, root)


@pytest.mark.parametrize("n", [2, 3, 7, 8, 13, 33])
def test_changed_leaf_sibling_side_or_root_fails(n):
    leaves = _leaves(n)
    root = merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        with pytest.raises(LedgerIntegrityError):
            verify_inclusion(leaf + b"!", proof, root)
        with pytest.raises(LedgerIntegrityError):
            verify_inclusion(leaf, proof, _flip(root))
        for step in range(len(proof)):
            sibling, is_left = proof[step]
            changed = [*proof[:step], (_flip(sibling), is_left), *proof[step + 1 :]]
            with pytest.raises(LedgerIntegrityError):
                verify_inclusion(leaf, changed, root)
            swapped = [*proof[:step], (sibling, not is_left), *proof[step + 1 :]]
            with pytest.raises(LedgerIntegrityError):
                verify_inclusion(leaf, swapped, root)
        if proof:
            with pytest.raises(LedgerIntegrityError):
                verify_inclusion(leaf, proof[:-1], root)
        other = (index + 1) % n
        if leaves[other] != leaf:
            with pytest.raises(LedgerIntegrityError):
                verify_inclusion(leaves[other], proof, root)


def test_malformed_proof_step_is_rejected():
    leaves = _leaves(4)
    proof = inclusion_proof(leaves, 0)
    with pytest.raises(LedgerIntegrityError):
        verify_inclusion(leaves[0], [(proof[0][0][:31], proof[0][1]), *proof[1:]], b"")


def test_odd_node_is_promoted_not_duplicated():
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    assert inclusion_proof([a, b, c], 2) == [(node_hash(leaf_hash(a), leaf_hash(b)), True)]


def test_single_leaf_root_is_its_leaf_hash():
    assert merkle_root([b"only"]) == leaf_hash(b"only")
    assert inclusion_proof([b"only"], 0) == []


def test_index_out_of_range():
    with pytest.raises(IndexError):
        inclusion_proof([], 0)
    with pytest.raises(IndexError):
        inclusion_proof([b"a"], 1)
    with pytest.raises(IndexError):
        inclusion_proof([b"a"], -1)


def test_inner_node_cannot_pass_as_a_leaf():
    """Second preimage: the two children of an inner node, presented as one 64-byte leaf."""
    leaves = _leaves(4)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    left, right = node_hash(hashes[0], hashes[1]), node_hash(hashes[2], hashes[3])
    root = merkle_root(leaves)
    assert node_hash(left, right) == root
    # Without domain tags, leaf = hashes[0] || hashes[1] with proof [(right, False)] would
    # reproduce the root; with them the leaf hash differs from the inner node.
    forged_leaf = hashes[0] + hashes[1]
    assert root_from_proof(forged_leaf, [(right, False)]) != root
    with pytest.raises(LedgerIntegrityError):
        verify_inclusion(forged_leaf, [(right, False)], root)
    # Nor can the node's preimage (0x01 || l || r) be a leaf: it would hash as 0x00 || 0x01...
    with pytest.raises(LedgerIntegrityError):
        verify_inclusion(b"\x01" + hashes[0] + hashes[1], [(right, False)], root)
    # Nor can a whole subtree root stand as a leaf of a shallower tree.
    with pytest.raises(LedgerIntegrityError):
        verify_inclusion(left + right, [], root)


@settings(deadline=None)
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=40), st.data())
def test_random_trees(leaves, data):
    index = data.draw(st.integers(0, len(leaves) - 1))
    root = merkle_root(leaves)
    assert root == reference_root(leaves)
    proof = inclusion_proof(leaves, index)
    verify_inclusion(leaves[index], proof, root)
    assert root_from_proof(leaves[index], proof) == root
