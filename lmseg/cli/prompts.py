"""``lmseg prompts ...``: show, validate and generate prompt banks.

``lmseg.cli`` calls :func:`register` on its sub-command parsers; every command sets
``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from lmseg.cli.common import error_message
from lmseg.prompts.bank import (
    BankError,
    PromptBank,
    load_bank,
    read_bank_data,
    shipped_banks,
    validate_bank,
)
from lmseg.prompts.compose import MODES, compose_prompts
from lmseg.prompts.quality import bank_warnings, cross_bank_differences
from lmseg.prompts.templates import clip_tokenizer

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``prompts`` command (``show``, ``validate``, ``generate``) to an argparse
    sub-parsers object."""
    prompts = subparsers.add_parser(
        "prompts",
        help="show, validate and generate attribute prompt banks",
        description="Attribute prompt banks: per-class color/shape/texture descriptions.",
    )
    prompts.set_defaults(func=lambda args: _usage(prompts))
    sub = prompts.add_subparsers(dest="prompts_command", metavar="{show,validate,generate}")

    show = sub.add_parser("show", help="print a bank (or the prompts it composes)")
    show.add_argument("bank", metavar="VOCAB", help="a shipped vocabulary name or a bank path")
    show.add_argument("--json", action="store_true", help="print the bank in its JSON schema")
    show.add_argument(
        "--mode",
        choices=[m for m in MODES if m != "formats"],
        help="print the composed prompts of this mode instead of the bank",
    )
    show.set_defaults(func=_show)

    validate = sub.add_parser(
        "validate",
        help="check banks (schema, order, token length; warnings: stock sentences, generic "
        "colours, differences between banks); no path: all shipped banks",
        description="Problems (exit status 1): schema, class order, prompts over 77 tokens. "
        "Warnings (exit status 1 only with --strict): a sentence used by more than 5 classes "
        "of a bank, a generic colour, and one class described differently by two of the banks "
        "checked together.",
    )
    validate.add_argument("paths", nargs="*", metavar="PATH", help="bank files or shipped names")
    validate.add_argument(
        "--name-free", action="store_true", help="also fail descriptions that name their class"
    )
    validate.add_argument("--strict", action="store_true", help="warnings fail too")
    validate.set_defaults(func=_validate)

    gen = sub.add_parser(
        "generate",
        help="write a bank with an LLM (any OpenAI-compatible /v1/chat/completions endpoint)",
        description="Write a bank with an LLM. The API key is read from the environment "
        "variable named by --api-key-env only; local servers need none. An existing bank at "
        "--out is resumed.",
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--classes",
        metavar="FILE",
        help="class names: one per line (# comments), a JSON list (.json), or a dataset "
        "folder / COCO file (its classes)",
    )
    source.add_argument("--vocabulary", metavar="NAME", help="a shipped vocabulary name")
    gen.add_argument("--out", required=True, metavar="BANK.json", help="bank to write or resume")
    gen.add_argument(
        "--name", help="the bank's vocabulary name (default: --vocabulary, or the file's stem)"
    )
    gen.add_argument(
        "--base-url", default=None, help="endpoint (default: $OPENAI_BASE_URL or OpenAI's)"
    )
    gen.add_argument("--model", default=None, help="model name (default: gpt-4o-mini)")
    gen.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR")
    gen.add_argument("--batch-size", type=int, default=20)
    gen.add_argument("--retries", type=int, default=5)
    gen.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per request, reply included (the whole request is cut off after this)",
    )
    gen.add_argument(
        "--max-reply-bytes",
        type=int,
        default=None,
        metavar="N",
        help="largest reply accepted (default 4 MiB)",
    )
    gen.add_argument("--temperature", type=float, default=0.2)
    gen.add_argument(
        "--no-json-mode", action="store_true", help="do not send response_format=json_object"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _show(args: argparse.Namespace) -> int:
    try:
        bank = load_bank(args.bank)
    except (BankError, KeyError, OSError) as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(bank.to_json())
        return 0
    if args.mode:
        prompts = compose_prompts(bank.names, bank, mode=args.mode)
        for k, (name, slots) in enumerate(zip(bank.names, prompts, strict=True)):
            print(f"{k:4d}  {json.dumps(name, ensure_ascii=False)}")
            for slot in slots:
                print(f"        {slot}")
        return 0
    prov = bank.provenance
    print(f"{bank.vocabulary}: {len(bank)} classes (model {prov.model}, created {prov.created})")
    for k, entry in enumerate(bank.classes):
        print(f"{k:4d}  {json.dumps(entry.name, ensure_ascii=False)}")
        for attribute in ("color", "shape", "texture"):
            print(f"        {attribute + ':':9s}{entry.text(attribute)}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _validate(args: argparse.Namespace) -> int:
    targets = args.paths or shipped_banks()
    if not targets:
        print("error: no bank given and no shipped banks found", file=sys.stderr)
        return 1
    tokenizer = clip_tokenizer()
    failed = warned = 0
    valid: list[PromptBank] = []
    for target in targets:
        problems = validate_bank(target, tokenizer=tokenizer, name_free=args.name_free)
        if problems:
            failed += 1
            print(f"FAIL {target}: {_count(len(problems), 'problem')}")
            for problem in problems:
                print(f"  {problem}")
            continue
        bank = PromptBank.from_dict(read_bank_data(target))
        valid.append(bank)
        warnings = bank_warnings(bank)
        if warnings:
            warned += 1
            print(f"WARN {target}: {len(bank)} classes, {_count(len(warnings), 'warning')}")
            for warning in warnings:
                print(f"  {warning}")
        else:
            print(f"ok   {target}: {len(bank)} classes")
    differences = cross_bank_differences(valid) if len(valid) > 1 else []
    if len(valid) > 1:
        state = "WARN" if differences else "ok  "
        print(
            f"{state} across {len(valid)} banks: {_count(len(differences), 'class')} described "
            "differently"
        )
        for difference in differences:
            print(f"  {difference}")
    print(
        f"{_count(len(targets), 'bank')}: {len(targets) - failed - warned} ok, {warned} with "
        f"warnings, {failed} failed; {_count(len(differences), 'difference')} between banks"
    )
    if failed or (args.strict and (warned or differences)):
        return 1
    return 0


def _generate(args: argparse.Namespace) -> int:
    # The LLM client is optional tooling, imported only here.
    from lmseg.prompts.generate import (
        DEFAULT_BASE_URL,
        DEFAULT_MODEL,
        GenerationError,
        generate_bank,
    )

    if not args.quiet:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.vocabulary:
            from lmseg.vocabularies import load_vocabulary

            try:
                class_names = load_vocabulary(args.vocabulary)
            except KeyError as e:
                print(f"error: {e.args[0]}", file=sys.stderr)
                return 2
            name = args.name or args.vocabulary
        else:
            from lmseg.data import read_classes  # class files with comments, or a dataset's classes

            class_names = read_classes(args.classes)
            name = args.name or os.path.splitext(os.path.basename(args.classes))[0]
        bank = generate_bank(
            class_names,
            args.out,
            vocabulary=name,
            base_url=args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            model=args.model or DEFAULT_MODEL,
            api_key_env=args.api_key_env,
            batch_size=args.batch_size,
            retries=args.retries,
            timeout=args.timeout,
            **({"max_reply_bytes": args.max_reply_bytes} if args.max_reply_bytes else {}),
            temperature=args.temperature,
            json_mode=not args.no_json_mode,
            progress=not args.quiet,
        )
    except (GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(bank)} classes")
    return 0
