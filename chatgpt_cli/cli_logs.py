"""`chatgpt-cli logs`: the conversation log (history.py) listed, shown, searched, removed, turned off and on."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from chatgpt_cli.cli_options import JsonOpt as JsonFlag
from chatgpt_cli.cli_plumbing import guarded, write_out
from chatgpt_cli.errors import UsageError

logs_app = typer.Typer(help="The conversation log: every chat and completion, kept in a local SQLite file.",
                       invoke_without_command=True, no_args_is_help=False)
CountOpt = Annotated[int, typer.Option("--count", "-n", help="How many (0 = all).")]


def opened():
    """The log for reading; None (having said so) when there is none yet."""
    from chatgpt_cli.history import db_path, open_existing

    log = open_existing()
    if log is None:
        write_out(f"no conversations logged yet (no database at {db_path()})\n")
    return log


def local_time(iso: str) -> str:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")


def one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def model_name(model: str | None) -> str:
    return Path(model).name if model else "-"


@logs_app.callback()
def logs_list(ctx: typer.Context, count: CountOpt = 10, as_json: JsonFlag = False) -> None:
    """Recent conversations, the latest first: id, time, model, turns, first prompt."""
    if ctx.invoked_subcommand is not None:
        return
    with guarded():
        if count < 0:
            raise UsageError(f"--count must be >= 0, not {count}")
        log = opened()
        if log is None:
            return
        rows = log.conversations(count or None)
        if as_json:
            write_out(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        elif not rows:
            write_out(f"no conversations logged yet ({log.path} is empty)\n")
        else:
            write_out("".join(f"{r['id']}  {local_time(r['updated'])}  {r['source']:<8}  "
                              f"{one_line(model_name(r['model']), 20):<20}  {r['turns']:>3}  "
                              f"{one_line(r['first_prompt'] or '', 60)}\n" for r in rows))


@logs_app.command("show")
def logs_show(cid: Annotated[str, typer.Argument(metavar="ID", help="A conversation id (see `logs`).")],
              as_json: Annotated[bool, typer.Option("--json", help="As /save writes it, so /load reads it.")] = False,
              ) -> None:
    """One conversation's transcript."""
    with guarded():
        log = opened()
        if log is None:
            return
        conv = log.conversation(cid)
        if conv is None:
            raise UsageError(f"no conversation {cid} in {log.path}")
        exchanges = log.exchanges(cid)
        if as_json:
            from chatgpt_cli.chatlog import to_save_format  # (imports torch, through the chat's sampling)

            write_out(json.dumps(to_save_format(conv, exchanges), indent=2, ensure_ascii=False) + "\n")
            return
        s = conv["settings"]
        head = [f"conversation {conv['id']} · {conv['source']} · started {local_time(conv['started'])} · "
                f"model {conv['model'] or '-'} ({conv['weights_hash'] or 'no hash'})"]
        if conv["source"] == "chat":
            head.append(f"template {conv['template']} · system: {conv['system']}")
        head.append(", ".join(f"{k} {v}" for k, v in s.items() if k != "stop"))
        labels = ("User", "Assistant") if conv["source"] == "chat" else ("Prompt", "Output")
        body = [f"\n{labels[0]}: {e['prompt']}\n{labels[1]}: {e['reply']}\n"
                + ("[cut short]\n" if e["finish"] == "interrupted" else "") for e in exchanges]
        write_out("\n".join(head) + "\n" + "".join(body))


@logs_app.command("search")
def logs_search(query: Annotated[str, typer.Argument(help="An FTS5 query: words, \"a phrase\", a OR b, pre*.")],
                count: CountOpt = 20, as_json: JsonFlag = False) -> None:
    """Exchanges whose prompt or reply matches, best first, each with a snippet, hits in brackets."""
    with guarded():
        log = opened()
        if log is None:
            return
        hits = log.search(query, count if count > 0 else -1)
        if as_json:
            write_out(json.dumps(hits, indent=2, ensure_ascii=False) + "\n")
        elif not hits:
            write_out(f"no match for {query!r}\n")
        else:
            write_out("".join(f"{h['conversation_id']} #{h['idx'] + 1}  {local_time(h['time'])}  "
                              f"{one_line(h['snippet'], 100)}\n" for h in hits))


@logs_app.command("rm")
def logs_rm(cid: Annotated[str, typer.Argument(metavar="ID", help="The conversation to delete.")]) -> None:
    """Delete a conversation (its text is overwritten in the file, not only unlinked)."""
    with guarded():
        log = opened()
        if log is None:
            return
        if not log.remove(cid):
            raise UsageError(f"no conversation {cid} in {log.path}")
        write_out(f"removed {cid}\n")


@logs_app.command("off")
def logs_off() -> None:
    """Stop logging (a setting kept beside the database; the log itself stays)."""
    with guarded():
        from chatgpt_cli.history import db_path, off_marker

        marker = off_marker(db_path())
        try:
            marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            marker.write_text("chatgpt-cli logs off: while this file exists nothing is logged\n")
        except OSError as e:
            raise UsageError(f"cannot write {marker}: {e.strerror or e}") from None
        write_out(f"logging off ({marker})\n")


@logs_app.command("on")
def logs_on() -> None:
    """Log again after `logs off`."""
    with guarded():
        from chatgpt_cli.history import db_path, off_marker

        off_marker(db_path()).unlink(missing_ok=True)
        write_out(f"logging on ({db_path()})\n")


@logs_app.command("status")
def logs_status() -> None:
    """On or off, where the database is, its size and what it holds."""
    with guarded():
        from chatgpt_cli.history import db_path, logging_state, open_existing

        path = db_path()
        on, why = logging_state()
        lines = [f"logging: {'on' if on else 'off, by ' + why}"]
        log = open_existing(path)
        if log is None:
            lines.append(f"database: {path} (not created yet)")
        else:
            size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
            c = log.counts()
            lines += [f"database: {path} ({size / 1024:.1f} KiB)",
                      f"conversations: {c['chat'] + c['complete']} ({c['chat']} chat, {c['complete']} complete); "
                      f"exchanges: {c['exchanges']}"]
        write_out("\n".join(lines) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app, name="logs")
