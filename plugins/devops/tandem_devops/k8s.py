"""k8s_validate: Kubernetes manifests checked offline against one version's API schemas.

The schemas are those kubernetes-validate ships (strict: an unknown field, the usual typo, is an
error). kubernetes-validate stops at the first error of a document; here every error is listed,
each at the line of the YAML node it is about.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv

from assistant.plugins import Files, Output, worker_tool

MAX_ERRORS = 200


def versions() -> list[str]:
    return [kv.major_minor(v) for v in kv.all_versions()]


@functools.lru_cache(maxsize=256)
def _validator(version: str, api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """The strict schema's validator for (version, apiVersion, kind); None when there is none."""
    # As kubernetes_validate.validate: rbac.authorization.k8s.io/v1 -> rbac-v1
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = kv.Resource.from_contents(definitions) @ (
        kv.Resource.from_contents(schema) @ kv.Registry()
    )
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _schema_version(wanted: str) -> str:
    """The newest shipped schema version not newer than ``wanted`` (as kubernetes-validate)."""
    want = kv.major_minor(wanted.lstrip("v"))
    older = [v for v in kv.all_versions() if kv.major_minor(v) <= want]
    if not older or want > kv.major_minor(kv.latest_version()):
        raise ValueError
    return str(older[-1])


def _line_of(node: yaml.Node, path: list[Any]) -> int:
    """The line (1-based) of the node at ``path`` in a composed YAML document, or the closest
    existing parent's."""
    for key in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    child = v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _dotted(path: list[Any]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(the document)"


def check_file(name: str, text: str, version: str) -> tuple[list[str], list[str], int]:
    """(errors, notes, manifests checked) for one YAML file; ``version`` as the schemas'
    folders name it (1.30.0)."""
    errors: list[str] = []
    notes: list[str] = []
    checked = 0
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        return [f"{name}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}"], [], 0
    for node in nodes:
        if node is None:
            continue
        data = yaml.SafeLoader("").construct_document(node)
        if not (isinstance(data, dict) and "apiVersion" in data and "kind" in data):
            continue  # not a manifest (values files, CI configuration...)
        checked += 1
        where = f"{data['kind']} {(data.get('metadata') or {}).get('name', '')}".strip()
        validator = _validator(version, str(data["apiVersion"]), str(data["kind"]))
        if validator is None:
            notes.append(
                f"{name}:{node.start_mark.line + 1}: no schema for {data['kind']} "
                f"({data['apiVersion']}) in Kubernetes {kv.major_minor(version)}: a custom "
                "resource, or an API this version does not serve. Not checked."
            )
            continue
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            path = list(error.absolute_path)
            line = _line_of(node, path)
            errors.append(f"{name}:{line}: {where}: {_dotted(path)}: {error.message}")
    return errors, notes, checked


def _files(args: dict[str, Any]) -> list[str]:
    base = (args.get("path") or "").strip().strip("/")
    prefix = f"{base}/**/" if base and base != "." else ""
    return [f"{prefix}*.yaml", f"{prefix}*.yml"]


def validate(files: Files, args: dict[str, Any]) -> Output:
    wanted = args.get("kubernetes_version") or kv.latest_version()
    try:
        schemas = _schema_version(str(wanted))
    except (ValueError, TypeError, IndexError):
        known = ", ".join(versions())
        return Output(False, f"Kubernetes version “{wanted}” is not known here. Known: {known}.")
    errors: list[str] = []
    notes: list[str] = []
    checked = 0
    version = kv.major_minor(schemas)
    for name, text in sorted(files.files.items()):
        file_errors, file_notes, count = check_file(name, text, schemas)
        errors += file_errors
        notes += file_notes
        checked += count
    lines = []
    if not checked and not errors:
        lines.append("No Kubernetes manifests (YAML with apiVersion and kind) were found.")
    elif errors:
        lines.append(
            f"{len(errors)} error(s) in {checked} manifest(s), Kubernetes {version} schemas "
            "(strict: unknown fields are errors):"
        )
        lines += errors[:MAX_ERRORS]
        if len(errors) > MAX_ERRORS:
            lines.append(f"[… {len(errors) - MAX_ERRORS} more errors not shown]")
    else:
        lines.append(f"All {checked} manifest(s) are valid against Kubernetes {version} schemas.")
    lines += notes
    if files.skipped:
        lines.append(f"Not read (too large or too many files): {', '.join(files.skipped[:20])}")
    return Output(not errors, "\n".join(lines))


k8s_validate = worker_tool(
    name="k8s_validate",
    description=(
        "Validate the Kubernetes manifests (YAML files with apiVersion and kind) in the "
        "repository, offline, against the API schemas of a Kubernetes version; unknown fields "
        "are errors. Returns each error with its file and line."
    ),
    parameters={
        "type": "object",
        "properties": {
            "kubernetes_version": {
                "type": "string",
                "description": "e.g. 1.30 (default: the newest known)",
            },
            "path": {"type": "string", "description": "Only under this directory"},
        },
        "required": [],
        "additionalProperties": False,
    },
    files=_files,
    function=validate,
)
