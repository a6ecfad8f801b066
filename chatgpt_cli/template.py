"""The chat transcript template: how a conversation becomes text for a model that only continues text.

A template is a small TOML file in prompts/ (see prompts/default.toml):

    system_format    "{system}\\n"             once, at the top
    user_format      "User: {message}\\n"      each user turn
    assistant_prefix "AI Assistant:"           the model writes the reply after this
    reply_format     "AI Assistant: {reply}\\n" each finished reply, as kept in the transcript
    stop             ["\\nUser:"]              where a reply ends (never printed)
    [sampling]       repeat_penalty = 1.1      chat's defaults for the logit processors (optional)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from chatgpt_cli.errors import UsageError
from chatgpt_cli.resources import shipped

TEMPLATE_SAMPLING = ("repeat_penalty", "repeat_last_n", "frequency_penalty", "presence_penalty", "no_repeat_ngram",
                     "min_p")


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    system: str
    system_format: str
    user_format: str
    assistant_prefix: str
    reply_format: str
    stop: tuple[str, ...]
    sampling: tuple[tuple[str, float], ...] = ()  # (name, value): defaults for the chat's processors
    source: str = field(default="", compare=False)  # what load_template takes to load it again

    def render_system(self, system: str) -> str:
        return self.system_format.replace("{system}", system)

    def render_user(self, message: str) -> str:
        return self.user_format.replace("{message}", message)

    def render_reply(self, reply: str) -> str:
        return self.reply_format.replace("{reply}", reply)


def available_templates() -> list[str]:
    return sorted(p.stem for p in shipped("prompts").glob("*.toml"))


def load_template(name_or_path: str) -> Template:
    """A shipped template by name ('default', 'qa'), or a TOML file by path.

    A path contains a '/' or ends in '.toml'; anything else is a shipped name, so a file called
    'default' in the current directory never takes the shipped template's place."""
    if "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path).expanduser()
        source = str(path.resolve())
    else:
        path, source = shipped("prompts") / f"{name_or_path}.toml", name_or_path
        if not name_or_path or not path.is_file():
            raise UsageError(f"unknown template {name_or_path!r}: choose one of "
                             f"{', '.join(available_templates())} or give a .toml file")
    if not path.is_file():
        raise UsageError(f"template file not found (or not a regular file): {path}")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8", errors="replace"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read template {path}: {e}") from None
    required = ("system", "system_format", "user_format", "assistant_prefix", "reply_format")
    missing = [k for k in required if not isinstance(data.get(k), str)]
    if missing:
        raise UsageError(f"template {path} lacks {', '.join(missing)}")
    stop = data.get("stop", [])
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise UsageError(f"template {path}: 'stop' must be a list of non-empty strings")
    if "{message}" not in data["user_format"] or "{reply}" not in data["reply_format"]:
        raise UsageError(f"template {path}: user_format needs {{message}} and reply_format {{reply}}")
    if not data["reply_format"].startswith(data["assistant_prefix"]):
        raise UsageError(f"template {path}: reply_format must start with assistant_prefix")
    sampling = data.get("sampling", {})
    if not (isinstance(sampling, dict) and set(sampling) <= set(TEMPLATE_SAMPLING)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sampling.values())):
        raise UsageError(f"template {path}: [sampling] takes numbers for {', '.join(TEMPLATE_SAMPLING)}")
    return Template(name=path.stem, description=str(data.get("description", "")), system=data["system"],
                    system_format=data["system_format"], user_format=data["user_format"],
                    assistant_prefix=data["assistant_prefix"], reply_format=data["reply_format"],
                    stop=tuple(stop), sampling=tuple(sampling.items()), source=source)
