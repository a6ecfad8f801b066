"""The chat transcript template: how a conversation becomes text for a model that only continues text.

A template is a small TOML file in prompts/ (see prompts/default.toml):

    system_format    "{system}\\n"             once, at the top
    user_format      "User: {message}\\n"      each user turn
    assistant_prefix "AI Assistant:"           the model writes the reply after this
    reply_format     "AI Assistant: {reply}\\n" each finished reply, as kept in the transcript
    stop             ["\\nUser:"]              where a reply ends (never printed)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from chatgpt_cli.errors import UsageError
from chatgpt_cli.resources import shipped


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
    """A shipped template by name ('default', 'qa'), or a TOML file by path."""
    path = Path(name_or_path).expanduser()
    source = str(path.resolve())
    if not (path.suffix == ".toml" or path.is_file()):
        path, source = shipped("prompts") / f"{name_or_path}.toml", name_or_path
        if not path.is_file():
            raise UsageError(f"unknown template {name_or_path!r}: choose one of "
                             f"{', '.join(available_templates())} or give a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
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
    return Template(name=path.stem, description=str(data.get("description", "")), system=data["system"],
                    system_format=data["system_format"], user_format=data["user_format"],
                    assistant_prefix=data["assistant_prefix"], reply_format=data["reply_format"],
                    stop=tuple(stop), source=source)
