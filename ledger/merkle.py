"""A binary Merkle tree over a block's transactions, with inclusion proofs.

Hashes are SHA3-256 with RFC 6962 domain tags, so a leaf can never pass as an inner
node nor the reverse (second-preimage resistance)::

    leaf  = H(0x00 || leaf bytes)           (leaf bytes: a canonical encoded transaction)
    node  = H(0x01 || left || right)
    empty = H(b"")                          (root of a tree with no leaves)

Levels are built bottom-up pairing neighbours; a level with an odd count *promotes* its
last node unchanged to the next level (it is never duplicated, so ``[a, b, c]`` and
``[a, b, c, c]`` have different roots). The shape is the same as RFC 6962's
(split at the largest power of two below n).
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.encoding import HASH_BYTES, LedgerIntegrityError, digest

LEAF_TAG = b"\x00"
NODE_TAG = b"\x01"
EMPTY_ROOT = digest(b"")

Proof = list[tuple[bytes, bool]]


def leaf_hash(leaf: bytes) -> bytes:
    """H(0x00 || leaf)."""
    return digest(LEAF_TAG + leaf)


def node_hash(left: bytes, right: bytes) -> bytes:
    """H(0x01 || left || right)."""
    return digest(NODE_TAG + left + right)


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    pairs = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        pairs.append(level[-1])
    return pairs


def root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    """The root over already-hashed leaves (`leaf_hash` of each leaf)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root of `leaves` (raw leaf bytes; each is hashed with `leaf_hash`)."""
    return root_of_hashes([leaf_hash(leaf) for leaf in leaves])


def inclusion_proof(leaves: Sequence[bytes], index: int) -> Proof:
    """The audit path of leaf `index`: (sibling hash, sibling-is-left) from leaf to root.

    A level where the node is promoted (odd last node) adds no step.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    proof: Proof = []
    level = [leaf_hash(leaf) for leaf in leaves]
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append((level[sibling], sibling < index))
        level = _next_level(level)
        index //= 2
    return proof


def root_from_proof(leaf: bytes, proof: Sequence[tuple[bytes, bool]]) -> bytes:
    """The root that `proof` implies for raw leaf bytes `leaf`."""
    node = leaf_hash(leaf)
    for sibling, sibling_is_left in proof:
        if len(sibling) != HASH_BYTES:
            raise LedgerIntegrityError(f"a proof step is {HASH_BYTES} bytes, got {len(sibling)}")
        node = node_hash(sibling, node) if sibling_is_left else node_hash(node, sibling)
    return node


def verify_inclusion(leaf: bytes, proof: Sequence[tuple[bytes, bool]], root: bytes) -> None:
    """Check that `leaf` is in the tree with root `root`; raise `LedgerIntegrityError` if not."""
    if root_from_proof(leaf, proof) != root:
        raise LedgerIntegrityError("Merkle inclusion proof does not lead to the root")
