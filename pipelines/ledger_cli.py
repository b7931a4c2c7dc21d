"""`qfl ledger verify | show | export`: read a run's ledger file."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger.encoding import LedgerIntegrityError
from ledger.store import open_readonly
from ledger.verify import verify_ledger
from qfl.errors import QflError

EXIT_BAD_LEDGER = 1


def run_ledger_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    try:
        if args.action == "verify":
            return _verify(args, console)
        if args.action == "show":
            return _show(args, console)
        return _export(args)
    except LedgerIntegrityError as exc:
        errors.print(f"[bold red]ledger INVALID[/]: {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_LEDGER
    except QflError as exc:
        errors.print(f"[bold red]ledger error[/]: {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_LEDGER


def _verify(args: argparse.Namespace, console: Console) -> int:
    head = None
    if args.head:
        try:
            head = bytes.fromhex(args.head)
        except ValueError:
            raise QflError(f"--head {args.head!r} is not a hex hash") from None
    report = verify_ledger(args.path, head=head, backend=args.backend)
    console.print(
        f"ledger OK: {report.blocks} blocks, {report.transactions} transactions, "
        f"{report.signatures_checked} signatures ({report.backend}), "
        f"{report.rounds_closed} rounds closed; head {report.head_hash.hex()} "
        f"at height {report.height}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    store = open_readonly(args.path)
    try:
        if args.height is not None:
            block = store.block(args.height)
            sys.stdout.write(block.model_dump_json(indent=2) + "\n")
            return 0
        table = Table(title=f"ledger {args.path}")
        for column in ("height", "round", "proposer", "hash", "signers", "transactions"):
            table.add_column(column)
        for block in store.blocks():
            kinds = [tx.kind for tx in block.transactions]
            summary = ", ".join(f"{k} x{kinds.count(k)}" for k in dict.fromkeys(kinds))
            header = block.header
            table.add_row(
                str(header.height),
                str(header.round),
                str(header.proposer),
                block.hash.hex()[:16],
                str(len(block.certificate)),
                summary,
            )
        console.print(table)
    finally:
        store.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    store = open_readonly(args.path)
    try:
        for block in store.blocks():
            for index, tx in enumerate(block.transactions):
                row = {"height": block.height, "index": index, **tx.model_dump(mode="json")}
                sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
    except BrokenPipeError:  # e.g. piped into head
        pass
    finally:
        store.close()
    return 0
