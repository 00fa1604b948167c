"""A new project's Prefect server starts on a copy of the empty database migrated at install
(flows/prefect_database.py), never over a database that is there."""

from __future__ import annotations

import os
import sqlite3
import stat

from flows import prefect_database


def _revision(path) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute("select version_num from alembic_version").fetchall()
    finally:
        db.close()


def test_a_new_home_gets_the_migrated_database_once(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    template = prefect_database.build()  # done by `make install`: at once here
    home = tmp_path / "project" / ".prefect"
    assert prefect_database.seed(home)
    seeded = home / "prefect.db"
    assert _revision(seeded) == _revision(template) != []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(seeded.stat().st_mode) == 0o666 & ~umask  # as SQLite creates one
    assert [p.name for p in home.iterdir()] == ["prefect.db"]  # no copy left half-way
    db = sqlite3.connect(seeded)
    db.execute("create table runs_of_the_user (id integer)")
    db.commit()
    db.close()
    assert not prefect_database.seed(home)  # a database is there: it stays as it is
    db = sqlite3.connect(seeded)
    assert db.execute("select count(*) from sqlite_master where name = 'runs_of_the_user'").fetchone() == (1,)
    db.close()


def test_nothing_is_copied_without_a_template_or_for_a_server_given_a_database(tmp_path, monkeypatch):
    prefect_database.build()
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db.example/prefect")
    assert not prefect_database.seed(tmp_path / "a")
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    monkeypatch.setattr(prefect_database, "template_path", lambda: tmp_path / "no-such.db")
    assert not prefect_database.seed(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
