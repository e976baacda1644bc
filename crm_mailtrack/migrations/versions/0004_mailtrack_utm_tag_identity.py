"""UTM tags: one per contact and combination of utm_* values (utm_key, hits)

Revision ID: 0004_mailtrack_utm_tag_identity
Revises: 0003_mailtrack_stats_cells
Create Date: 2026-11-30 12:00:00

Every click on a link with ``utm_*`` parameters used to add a tag; now a contact has one tag per
combination, identified by ``utm_key`` (SHA-256 of the five values), with ``hits`` counting
sightings. Existing duplicates are merged here: the oldest row of a combination stays, with
``hits`` = the number of rows merged and ``last_active`` = their latest; the others are
deleted. Plain SQLAlchemy and Alembic only (the key is computed as services/utm.py does, copied
here so that this revision stays valid when that module changes). Downgrade keeps the merge.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0004_mailtrack_utm_tag_identity'
down_revision: str | Sequence[str] | None = '0003_mailtrack_stats_cells'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = ('utm_campaign', 'utm_source', 'utm_medium', 'utm_content', 'utm_term')
_BATCH = 500


def _key(values: Sequence[str | None]) -> str:
    canon = json.dumps([v or None for v in values], separators=(',', ':'), ensure_ascii=False)
    return hashlib.sha256(canon.encode('utf-8')).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table('mailtrack_utm_tags') as batch:
        batch.add_column(sa.Column('utm_key', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('hits', sa.BigInteger(), server_default='1', nullable=False))
    _merge(op.get_bind())
    with op.batch_alter_table('mailtrack_utm_tags') as batch:
        batch.alter_column('utm_key', existing_type=sa.String(length=64), nullable=False)
        batch.drop_index('ix_mailtrack_utm_tags_contact')
        batch.create_unique_constraint('uq_mailtrack_utm_tags_tenant_id_contact_id_utm_key',
                                       ['tenant_id', 'contact_id', 'utm_key'])


def _merge(conn: sa.Connection) -> None:
    """Fill ``utm_key`` and fold each combination's rows into its oldest one."""
    tags = sa.table('mailtrack_utm_tags', sa.column('id'), sa.column('tenant_id'), sa.column('contact_id'),
                    *(sa.column(k) for k in _KEYS), sa.column('last_active'), sa.column('utm_key'),
                    sa.column('hits'))
    keep: dict[tuple[str, str, str], list] = {}  # (tenant, contact, key) -> [id, rows, latest]
    doomed: list[int] = []
    rows = conn.execute(sa.select(tags.c.id, tags.c.tenant_id, tags.c.contact_id, *(tags.c[k] for k in _KEYS),
                                  tags.c.last_active).order_by(tags.c.id)).all()
    for row in rows:
        ident = (row.tenant_id, row.contact_id, _key([row._mapping[k] for k in _KEYS]))
        seen = keep.get(ident)
        if seen is None:
            keep[ident] = [row.id, 1, row.last_active]
            continue
        doomed.append(row.id)
        seen[1] += 1
        if row.last_active is not None and (seen[2] is None or row.last_active > seen[2]):
            seen[2] = row.last_active
    update = (sa.update(tags).where(tags.c.id == sa.bindparam('tag_id'))
              .values(utm_key=sa.bindparam('key'), hits=sa.bindparam('n'), last_active=sa.bindparam('latest')))
    values = [{'tag_id': tag_id, 'key': ident[2], 'n': n, 'latest': latest}
              for ident, (tag_id, n, latest) in keep.items()]
    for start in range(0, len(values), _BATCH):
        conn.execute(update, values[start:start + _BATCH])
    for start in range(0, len(doomed), _BATCH):
        conn.execute(sa.delete(tags).where(tags.c.id.in_(doomed[start:start + _BATCH])))


def downgrade() -> None:
    with op.batch_alter_table('mailtrack_utm_tags') as batch:
        batch.drop_constraint('uq_mailtrack_utm_tags_tenant_id_contact_id_utm_key', type_='unique')
        batch.create_index('ix_mailtrack_utm_tags_contact', ['tenant_id', 'contact_id'])
        batch.drop_column('hits')
        batch.drop_column('utm_key')
