"""Reading a job spec file, applying `--set a.b=value` overrides, and wording validation errors."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import UserError
from orchestrator.spec import JobSpec


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected a.b.c=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _member_for_tag(annotation: Any, tag: str) -> type[BaseModel] | None:
    """The model of a discriminated union whose `name` literal equals `tag`."""
    for member in typing.get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            name_field = member.model_fields.get("name")
            if name_field is not None and tag in typing.get_args(name_field.annotation):
                return member
        else:
            found = _member_for_tag(member, tag)
            if found is not None:
                return found
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _tagged_union(annotation: Any) -> Any:
    """The discriminated union inside an optional or sequence annotation (`method`, `methods`), if any."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        if any(getattr(m, "discriminator", None) is not None for m in meta):
            return inner
        return _tagged_union(inner)
    for arg in typing.get_args(annotation):
        found = _tagged_union(arg)
        if found is not None:
            return found
    return None


def _walk(loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """The user-visible field path of a pydantic error location, and the model holding its last field."""
    model: type[BaseModel] | None = JobSpec
    path: list[str] = []
    pending_union: Any = None
    for part in loc:
        if isinstance(part, int):
            path[-1] = f"{path[-1]}[{part}]" if path else f"[{part}]"
            continue
        if pending_union is not None:
            pending_union, model = None, _member_for_tag(pending_union, str(part))
            if model is not None:
                continue
        path.append(str(part))
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            model = None
            continue
        if field.discriminator is not None:
            pending_union, model = field.annotation, None
        elif (union := _tagged_union(field.annotation)) is not None:
            pending_union, model = union, None
        else:
            model = _model_in(field.annotation)
    return path, model


def describe_validation_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    path, _ = _walk(loc)
    where = ".".join(path) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        _, parent = _walk(loc[:-1])
        allowed = sorted(parent.model_fields) if parent is not None else []
        return f"{source}: {where}: unknown field; allowed: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        return f"{source}: {where}.name: unknown {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{source}: {where}.name: missing; it names the method"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"{source}: {where}: missing (required)"
    given = first.get("input")
    if isinstance(given, dict):  # a whole-section check: the message names the fields
        return f"{source}: {where}: {message}"
    return f"{source}: {where}: {message} (got {given!r})"


def validate_spec(data: dict, source: str) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(source, error)) from None


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: no such spec file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a spec file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the spec file: {error.strerror or error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{line} not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a job spec is a mapping of sections, got {type(data).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        apply_override(data, key, value)
    return validate_spec(data, str(path))
