"""`member-support` migrate, archive, purge and the CLI's contract: --help, exit codes, counts."""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from conftest import fresh_database
from ops_support import CLI, asyncpg_dsn, cli_environment, execute, fetch_value, run, run_cli

from app import cli
from app.migrations import head_revision, upgrade_to_head

COMMANDS = ("serve", "migrate", "stats", "archive", "purge", "redact")
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/member_support"


@pytest.fixture(scope="module")
def cli_database(server_url: str) -> Iterator[str]:
    """A migrated database whose data the CLI subprocesses can see (committed)."""
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def empty_tables(cli_database: str) -> Iterator[str]:
    truncate = "TRUNCATE users, conversations, messages, escalations CASCADE"
    run(execute(cli_database, truncate))
    yield cli_database
    run(execute(cli_database, truncate))


def _seed_conversations(url: str, *, count: int, status: str, idle_days: int) -> None:
    """`count` conversations of one status whose last activity was `idle_days` ago."""
    run(
        execute(
            url,
            "INSERT INTO users (id) VALUES (gen_random_uuid()) ",
            "INSERT INTO conversations (user_id, session_id, status, created_at, updated_at) "
            "SELECT (SELECT id FROM users LIMIT 1), "
            f"'{status}-' || {idle_days} || '-' || n || '-' || gen_random_uuid(), '{status}', "
            f"now() - interval '{idle_days} days', now() - interval '{idle_days} days' "
            f"FROM generate_series(1, {count}) AS n",
        )
    )


def _count(url: str, status: str) -> int:
    value = run(fetch_value(url, "SELECT count(*) FROM conversations WHERE status = $1", status))
    assert isinstance(value, int)
    return value


# --- the command line itself -------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: member-support {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments",
    [
        ["archive", "--inactive-days", "soon"],
        ["archive"],
        ["purge", "--archived-days", "-3"],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
        ["stats", "--since", "yesterday-ish"],
        ["archive", "--inactive-days", "3", "--batch-size", "0"],
        ["reticulate"],
        [],
    ],
)
def test_a_bad_argument_is_one_line_and_exit_code_2(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("member-support")
    assert "error:" in error


def test_a_bad_argument_from_the_shell_exits_2(tmp_path: Path) -> None:
    result = run_cli("purge", "--archived-days", "lots", database_url=None, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "member-support purge: error: argument --archived-days: 'lots' is not a whole number "
        "(see member-support purge --help)"
    ]


@pytest.mark.parametrize(
    "arguments",
    [["stats"], ["archive", "--inactive-days", "30"], ["purge", "--archived-days", "90"]],
)
def test_an_unreachable_database_is_one_line_and_exit_code_1(
    arguments: list[str], tmp_path: Path
) -> None:
    result = run_cli(*arguments, database_url=UNREACHABLE, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: database unreachable"
    assert result.stdout == ""


def test_migrate_against_an_unreachable_database_is_one_line_and_exit_code_1(
    tmp_path: Path,
) -> None:
    result = run_cli("migrate", database_url=UNREACHABLE, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: database unreachable"


def test_a_missing_database_is_named_without_the_url(
    server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import with_database

    monkeypatch.setenv("DATABASE_URL", with_database(server_url, "member_support_no_such_db"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stats"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error == "error: the database named in the URL does not exist\n"


def test_database_commands_need_a_database_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_MIGRATION_URL", raising=False)
    for command in (["stats"], ["migrate"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(command)
        assert exit_info.value.code == 1
        assert capsys.readouterr().err == "error: DATABASE_URL is not set\n"


def test_a_bad_setting_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    result = run_cli(
        "stats", database_url="mysql://nobody@localhost/x", cwd=tmp_path, LOG_FORMAT="xml"
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


# --- migrate -------------------------------------------------------------------------------


def test_migrate_builds_an_empty_database_and_says_how_many_revisions_it_applied(
    server_url: str, tmp_path: Path
) -> None:
    with fresh_database(server_url) as url:
        first = run_cli("migrate", database_url=url, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert f"schema at {head_revision()} (head)" in first.stdout
        assert first.stdout.startswith("applied ")
        assert int(first.stdout.split()[1]) >= 8
        again = run_cli("migrate", database_url=url, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("applied 0 revision(s)")


def test_migrate_uses_the_migration_url_when_one_is_set(
    server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_database(server_url) as url:
        monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
        monkeypatch.setenv("DATABASE_MIGRATION_URL", url)
        cli.main(["migrate"])
        assert f"schema at {head_revision()} (head), was empty" in capsys.readouterr().out
        version = run(fetch_value(url, "SELECT version_num FROM alembic_version"))
        assert version == head_revision()


# --- archive -------------------------------------------------------------------------------


def test_archive_archives_idle_conversations_and_counts_them(
    empty_tables: str, tmp_path: Path
) -> None:
    _seed_conversations(empty_tables, count=5, status="active", idle_days=40)
    _seed_conversations(empty_tables, count=2, status="active", idle_days=5)
    result = run_cli("archive", "--inactive-days", "30", database_url=empty_tables, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "archived 5 conversation(s)"
    assert _count(empty_tables, "archived") == 5
    assert _count(empty_tables, "active") == 2


def test_archive_works_through_a_large_backlog_in_batches(
    empty_tables: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_conversations(empty_tables, count=7, status="closed", idle_days=40)
    monkeypatch.setenv("DATABASE_URL", empty_tables)
    cli.main(["archive", "--inactive-days", "30", "--batch-size", "2"])
    assert capsys.readouterr().out.strip() == "archived 7 conversation(s)"
    assert _count(empty_tables, "archived") == 7


def test_archive_twice_changes_nothing_the_second_time(
    empty_tables: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_conversations(empty_tables, count=3, status="active", idle_days=40)
    monkeypatch.setenv("DATABASE_URL", empty_tables)
    cli.main(["archive", "--inactive-days", "30"])
    cli.main(["archive", "--inactive-days", "30"])
    assert capsys.readouterr().out.splitlines() == [
        "archived 3 conversation(s)",
        "archived 0 conversation(s)",
    ]


def test_archive_leaves_conversations_with_an_open_escalation(
    empty_tables: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_conversations(empty_tables, count=2, status="escalated", idle_days=40)
    run(
        execute(
            empty_tables,
            "INSERT INTO escalations (conversation_id, issue_type, original_request, status) "
            "SELECT id, 'loan', 'help', 'in_progress' FROM conversations ORDER BY id LIMIT 1",
            "INSERT INTO escalations (conversation_id, issue_type, original_request, status) "
            "SELECT id, 'loan', 'help', 'resolved' FROM conversations ORDER BY id DESC LIMIT 1",
        )
    )
    monkeypatch.setenv("DATABASE_URL", empty_tables)
    cli.main(["archive", "--inactive-days", "30"])
    assert capsys.readouterr().out.strip() == "archived 1 conversation(s)"
    assert _count(empty_tables, "escalated") == 1


def test_two_archives_at_once_archive_each_conversation_once(
    empty_tables: str, tmp_path: Path
) -> None:
    _seed_conversations(empty_tables, count=400, status="active", idle_days=40)
    environment = cli_environment(empty_tables)
    arguments = [CLI, "archive", "--inactive-days", "30", "--batch-size", "25"]
    processes = [
        subprocess.Popen(  # both shells start before either finishes
            arguments, env=environment, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    counts = [int(output.split()[1]) for output in outputs]
    assert _count(empty_tables, "archived") == 400
    # Every conversation was archived by exactly one of them (SKIP LOCKED, no double count);
    # a shell that found only rows the other had locked may stop early, never wrongly.
    assert sum(counts) == 400


# --- purge ---------------------------------------------------------------------------------


def test_purge_dry_run_counts_and_deletes_nothing(empty_tables: str, tmp_path: Path) -> None:
    _seed_conversations(empty_tables, count=3, status="archived", idle_days=100)
    result = run_cli(
        "purge", "--archived-days", "90", "--dry-run", database_url=empty_tables, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "would delete 3 archived conversation(s)"
    assert _count(empty_tables, "archived") == 3


def test_purge_deletes_old_archived_conversations_with_their_messages(
    empty_tables: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_conversations(empty_tables, count=5, status="archived", idle_days=100)
    _seed_conversations(empty_tables, count=2, status="archived", idle_days=10)
    _seed_conversations(empty_tables, count=1, status="active", idle_days=100)
    run(
        execute(
            empty_tables,
            # Without the triggers, which would mark every conversation active just now.
            "BEGIN",
            "ALTER TABLE messages DISABLE TRIGGER USER",
            "INSERT INTO messages (conversation_id, seq, role, content) "
            "SELECT id, 1, 'user', 'hello' FROM conversations",
            "ALTER TABLE messages ENABLE TRIGGER USER",
            "COMMIT",
        )
    )
    monkeypatch.setenv("DATABASE_URL", empty_tables)
    cli.main(["purge", "--archived-days", "90", "--batch-size", "2"])
    cli.main(["purge", "--archived-days", "90"])
    assert capsys.readouterr().out.splitlines() == [
        "deleted 5 archived conversation(s)",
        "deleted 0 archived conversation(s)",
    ]
    assert _count(empty_tables, "archived") == 2
    assert _count(empty_tables, "active") == 1
    messages_left = run(fetch_value(empty_tables, "SELECT count(*) FROM messages"))
    assert messages_left == 3


def test_two_purges_at_once_delete_each_conversation_once(
    empty_tables: str, tmp_path: Path
) -> None:
    _seed_conversations(empty_tables, count=300, status="archived", idle_days=100)
    environment = cli_environment(empty_tables)
    arguments = [CLI, "purge", "--archived-days", "90", "--batch-size", "20"]
    processes = [
        subprocess.Popen(
            arguments, env=environment, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert sum(int(output.split()[1]) for output in outputs) == 300
    assert _count(empty_tables, "archived") == 0


def test_purge_does_not_wait_on_a_conversation_another_session_holds(
    empty_tables: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncpg

    _seed_conversations(empty_tables, count=3, status="archived", idle_days=100)
    monkeypatch.setenv("DATABASE_URL", empty_tables)

    async def purge_while_one_row_is_locked() -> None:
        holder = await asyncpg.connect(asyncpg_dsn(empty_tables))
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT id FROM conversations ORDER BY id LIMIT 1 FOR UPDATE")
            # In a thread: the CLI runs its own event loop.
            await asyncio.wait_for(
                asyncio.to_thread(cli.main, ["purge", "--archived-days", "90"]), timeout=30
            )
            await transaction.rollback()
        finally:
            await holder.close()

    run(purge_while_one_row_is_locked())
    assert capsys.readouterr().out.strip() == "deleted 2 archived conversation(s)"
    assert _count(empty_tables, "archived") == 1


def test_cli_main_module_runs_like_the_console_script(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert all(command in out.getvalue() for command in COMMANDS)
