"""Edit requests: (prompt with a "{}" subject slot, subject, new target), validated up front."""

from __future__ import annotations

from dataclasses import dataclass


class RequestError(ValueError):
    """An edit request is malformed; the message names the case."""


def _fail(case_id, problem: str) -> RequestError:
    return RequestError(f"edit request {case_id!r}: {problem}")


@dataclass(frozen=True)
class EditRequest:
    case_id: object
    prompt: str  # exactly one "{}" where the subject goes
    subject: str
    target_new: str  # stored with MEMIT's leading space
    target_true: str | None = None

    def __post_init__(self) -> None:
        case = self.case_id
        if not isinstance(case, (int, str)) or isinstance(case, bool):  # ids are recorded as strings
            raise _fail(case, f"case_id must be an integer or a string, got {type(case).__name__}")
        for name in ("prompt", "subject", "target_new", "target_true"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name == "target_true" and value is None):
                raise _fail(case, f"{name} must be a string, got {value!r}")
        if self.prompt.count("{}") != 1:
            raise _fail(case, f"prompt must contain exactly one '{{}}' subject slot, found "
                              f"{self.prompt.count('{}')} in {self.prompt!r}")
        if self.prompt.replace("{}", "").count("{") or self.prompt.replace("{}", "").count("}"):
            raise _fail(case, f"prompt has a stray brace besides the '{{}}' slot: {self.prompt!r}")
        if not self.subject.strip():
            raise _fail(case, "subject is empty")
        # Surrounding blanks would land in the prompt text but not in the subject's token span.
        object.__setattr__(self, "subject", self.subject.strip())
        for name in ("target_new", "target_true"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value.strip():
                raise _fail(case, f"{name} is empty")
            if "{" in value or "}" in value:
                raise _fail(case, f"{name} contains a brace, which breaks prompt formatting: {value!r}")
        if not self.target_new.startswith(" "):  # GPT-2 style BPE needs the space (MEMIT does this)
            object.__setattr__(self, "target_new", " " + self.target_new)

    @classmethod
    def from_raw_prompt(cls, case_id, text: str, subject: str, target_new: str, target_true=None):
        """From a prompt that spells the subject out (zsRE's `src`): the subject becomes "{}"."""
        subject = subject.strip()
        if not subject:
            raise _fail(case_id, "subject is empty")
        if subject not in text:
            raise _fail(case_id, f"subject {subject!r} does not occur in prompt {text!r}")
        return cls(case_id, text.replace(subject, "{}", 1), subject, target_new, target_true)

    @classmethod
    def from_record(cls, record: dict) -> "EditRequest":
        """From a CounterFact / MultiCounterFact record (`requested_rewrite` with {"str": ...} targets,
        or plain strings as a hand-written request file has them)."""
        case_id = record.get("case_id", "<no case_id>")
        rewrite = record.get("requested_rewrite")
        if not isinstance(rewrite, dict):
            raise _fail(case_id, "record has no 'requested_rewrite' mapping")
        missing = [field for field in ("prompt", "subject", "target_new") if field not in rewrite]
        if missing:
            raise _fail(case_id, f"requested_rewrite lacks field {missing[0]!r}")
        target_true = _target(case_id, rewrite, "target_true") if rewrite.get("target_true") is not None else None
        return cls(case_id, rewrite["prompt"], rewrite["subject"], _target(case_id, rewrite, "target_new"), target_true)

    def text(self, template: str = "{}") -> str:
        """The prompt placed in a context template, with the subject filled in."""
        return template.format(self.prompt).format(self.subject)


def _target(case_id, rewrite: dict, field: str) -> str:
    value = rewrite[field]
    value = value.get("str") if isinstance(value, dict) else value
    if not isinstance(value, str):
        raise _fail(case_id, f"{field} must be a string or {{\"str\": string}}, got {rewrite[field]!r}")
    return value


def requests_from_records(records) -> list[EditRequest]:
    return [EditRequest.from_record(record) for record in records]


def check_unique_ids(requests: list[EditRequest]) -> None:
    """Ids name the edits in a delta's metadata and reports, where they are written as strings: two
    requests whose ids read alike (1 and "1") would be indistinguishable there."""
    seen: dict[str, object] = {}
    for request in requests:
        name = str(request.case_id)
        if name in seen:
            raise RequestError(f"edit requests {seen[name]!r} and {request.case_id!r} share the id {name!r}; "
                               "give every request its own case_id")
        seen[name] = request.case_id


def shared_keys(requests: list[EditRequest]) -> list[str]:
    """Warnings for requests that MEMIT gives the same key: the key is read at the subject's last
    token, so it depends only on the prompt up to the subject. Two such requests ask one key for two
    values (the solve averages them, and neither may take fully) or repeat one edit."""
    groups: dict[tuple[str, str], list[EditRequest]] = {}
    for request in requests:
        groups.setdefault((request.prompt.split("{}")[0], request.subject), []).append(request)
    warnings = []
    for (_, subject), group in groups.items():
        if len(group) < 2:
            continue
        ids = ", ".join(repr(r.case_id) for r in group)
        if len({r.target_new for r in group}) == 1:
            warnings.append(f"edit requests {ids} repeat one edit of {subject!r}")
        else:
            warnings.append(f"edit requests {ids} give {subject!r} different targets from the same key "
                            "(the prompt up to the subject is the same): the solve fits their average, "
                            "and neither may take fully")
    return warnings
