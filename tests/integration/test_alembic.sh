#!/usr/bin/env bash
# test_alembic.sh - Alembic interop (issue 16) with the real Alembic from
# Debian (python3-alembic, python3-psycopg2; installed by the bootstrap when
# missing): `alembic upgrade` to a revision; a phasegate plan that requires
# it and stamps the next; `alembic current` then shows the stamped revision
# and `alembic upgrade head` goes on from it.  A wrong revision, a missing
# version table, and a rollback while Alembic has moved on are refused
# (exit 2, naming both revisions) before anything changes; a rollback of the
# plan writes `requires` back.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

PY=/usr/bin/python3
if ! "$PY" -c 'import alembic, psycopg2' 2>/dev/null; then
	bash "$PHG_SOURCE_DIR/scripts/bootstrap.sh" python3-alembic python3-psycopg2 >"$T/bootstrap.log" 2>&1 ||
		fail "cannot install python3-alembic (scripts/bootstrap.sh):" "$(tail -5 "$T/bootstrap.log")"
fi

new_db alembic
A=$T/alembic
mkdir -p "$A"
(cd "$A" && "$PY" -m alembic init migrations >/dev/null) || fail "alembic init failed"
sed -i "s|^sqlalchemy.url = .*|sqlalchemy.url = postgresql+psycopg2://postgres@/${TEST_DB}?host=${PGHOST}\&port=${PGPORT}|" "$A/alembic.ini"
cat >"$A/migrations/versions/a1_accounts.py" <<'PY'
"""accounts

Revision ID: a1
"""
from alembic import op
import sqlalchemy as sa

revision = 'a1'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('accounts', sa.Column('id', sa.BigInteger, primary_key=True),
                    sa.Column('email', sa.Text, nullable=False))


def downgrade():
    op.drop_table('accounts')
PY
cat >"$A/migrations/versions/b2_verified.py" <<'PY'
"""accounts.verified: applied by phasegate (plans/verified.yaml), zero-downtime

Revision ID: b2
"""
revision = 'b2'
down_revision = 'a1'
branch_labels = None
depends_on = None


def upgrade():
    pass  # phasegate apply plans/verified.yaml stamps this revision


def downgrade():
    pass  # phasegate rollback plans/verified.yaml writes a1 back
PY
cat >"$A/migrations/versions/c3_audit.py" <<'PY'
"""audit

Revision ID: c3
"""
from alembic import op
import sqlalchemy as sa

revision = 'c3'
down_revision = 'b2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('audit', sa.Column('id', sa.BigInteger, primary_key=True))


def downgrade():
    op.drop_table('audit')
PY
alembic() { (cd "$A" && "$PY" -m alembic "$@"); }
current() { alembic current 2>/dev/null | awk '{print $1}'; }

alembic upgrade a1 >"$T/alembic.log" 2>&1 || fail "alembic upgrade a1 failed:" "$(cat "$T/alembic.log")"
assert_eq "a1" "$(current)" "alembic is at a1"

cat >"$T/verified.yaml" <<'YAML'
version: 1
name: verified
alembic: { requires: a1, stamps: b2 }
settings: { lock_timeout: 200ms }
phases:
  - name: expand
    steps:
      - add_column: { table: accounts, column: verified, type: boolean }
  - name: default
    steps:
      - set_default: { table: accounts, column: verified, default: "false" }
YAML
assert_exit 0 phg validate "$T/verified.yaml"
assert_exit 0 phg plan "$T/verified.yaml"
assert_file_contains "$T/out" "-- Alembic: alembic_version must hold revision \"a1\" before anything runs"

# ---- the wrong revision, or no version table: exit 2, nothing changed
sed 's/requires: a1, stamps: b2/requires: zz, stamps: b2/' "$T/verified.yaml" >"$T/wrong.yaml"
assert_exit 2 phg apply "$T/wrong.yaml"
assert_file_contains "$T/err" "plan \"verified\" requires Alembic revision \"zz\", but alembic_version holds \"a1\""
assert_file_contains "$T/err" "alembic upgrade zz"
sed 's/stamps: b2 }/stamps: b2, table: nosuch.alembic_version }/' "$T/verified.yaml" >"$T/notable.yaml"
assert_exit 2 phg apply "$T/notable.yaml"
assert_file_contains "$T/err" "but nosuch.alembic_version does not exist on this database"
assert_eq "0" "$(psql_q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'verified'")" \
	"nothing was changed"
assert_eq "a1" "$(current)" "alembic still at a1"

# ---- apply: stamps b2 in the transaction that records the completion
assert_exit 0 phg apply "$T/verified.yaml"
assert_file_contains "$T/err" "Alembic: alembic_version holds \"a1\", as the plan requires"
assert_eq "b2" "$(current)" "alembic current shows the stamped revision"
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'verified' ORDER BY id DESC LIMIT 1")" "the run is completed"
# the stamp and the completion are one statement: the same transaction id
assert_eq "t" "$(psql_q "SELECT (SELECT xmin FROM alembic_version) = (SELECT xmin FROM phasegate.runs WHERE plan = 'verified' ORDER BY id DESC LIMIT 1)")" \
	"alembic_version and the run's completion were written in one transaction"
assert_exit 0 phg apply "$T/verified.yaml" # completed: nothing to do, no check
assert_eq "b2" "$(current)" "a completed plan applies nothing"

# ---- alembic goes on from the stamped revision
alembic upgrade head >"$T/alembic.log" 2>&1 || fail "alembic upgrade head failed:" "$(cat "$T/alembic.log")"
assert_eq "c3" "$(current)" "alembic upgrade head continued from b2"
assert_eq "audit" "$(psql_q "SELECT to_regclass('audit')")" "c3 ran"

# ---- rollback while Alembic has moved on: refused before anything changes
assert_exit 2 phg rollback "$T/verified.yaml"
assert_file_contains "$T/err" "plan \"verified\" requires Alembic revision \"b2\", but alembic_version holds \"c3\""
assert_file_contains "$T/err" "alembic downgrade b2"
assert_eq "1" "$(psql_q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'verified'")" \
	"the refused rollback changed nothing"

# ---- downgrade to the plan's revision, then roll the plan back: a1 again
alembic downgrade b2 >"$T/alembic.log" 2>&1 || fail "alembic downgrade b2 failed:" "$(cat "$T/alembic.log")"
assert_exit 0 phg rollback "$T/verified.yaml"
assert_eq "a1" "$(current)" "a rollback of the plan restores the required revision"
assert_eq "0" "$(psql_q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'verified'")" \
	"the column is reverted"

# ---- and forward again, all the way: phasegate, then Alembic
assert_exit 0 phg apply "$T/verified.yaml"
assert_eq "b2" "$(current)" "stamped again"
alembic upgrade head >"$T/alembic.log" 2>&1 || fail "alembic upgrade head failed:" "$(cat "$T/alembic.log")"
assert_eq "c3" "$(current)" "head"
pass
