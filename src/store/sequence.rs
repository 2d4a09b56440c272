//! The SQL that walks key sequences of parked rows ([`crate::model::sequence`]), for both tables
//! that hold them: the relay's `relay_parked` and the consumer's `consumer_dlq`. Each describes
//! its table once ([`Layout`]); the walk, the counts, the budget and the chunk's end are written
//! here, once.
//!
//! The walk is a loose index scan: a recursive query that, from one sequence, finds the next one
//! with a single probe of an index that leads with the sequence's columns (migration 0011), then
//! reads its head (the first row in the sequence's order) and its counts from the same index.
//! So a page or a chunk costs what it returns, whatever number of rows wait behind its heads.
//!
//! Rows that arrive while a statement runs are not in its snapshot: what a chunk counts is what
//! it changes.

use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::model::sequence::Chunk;

/// How a table holds key sequences. Fragments are written on the alias `r` (a row of the table).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub table: &'static str,
    /// The columns that name a sequence, in the order of the index that leads with them.
    pub id: [&'static str; 3],
    /// The column that orders a sequence's rows; its first row is the head.
    pub order: &'static str,
    /// The head's columns that a walk returns (the id columns among them).
    pub columns: &'static str,
    /// Counts over the sequence's rows: `open` (every row), `stuck` (those a retry releases) and
    /// `held` (those waiting behind the head).
    pub counts: &'static str,
}

impl Layout {
    /// `a.x = b.x AND ...` over the id columns: the same sequence.
    pub fn same_sequence(&self, a: &str, b: &str) -> String {
        self.id
            .iter()
            .map(|c| format!("{a}.{c} = {b}.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn tuple(&self, alias: &str) -> String {
        let columns: Vec<String> = self.id.iter().map(|c| format!("{alias}.{c}")).collect();
        format!("({})", columns.join(", "))
    }
}

/// One walk over a table's sequences.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    pub layout: &'a Layout,
    /// What every row of the walk meets, on `r`: the group or sink, the open states, a key.
    pub scope: String,
    /// The placeholders of the sequence the walk starts after, one per id column.
    pub start: [&'a str; 3],
    /// What a head must meet, on `h`.
    pub head: String,
    /// The placeholder of the most sequences to read.
    pub limit: &'a str,
}

impl Walk<'_> {
    /// The CTEs `seq` (the sequences after the start, in order) and `heads` (each with its head's
    /// columns and its counts, filtered by `head`, at most `limit`).
    pub fn heads(&self) -> String {
        let Walk {
            layout,
            scope,
            head,
            limit,
            ..
        } = self;
        let Layout {
            table,
            order,
            columns,
            counts,
            ..
        } = layout;
        let ids = layout.id.map(|c| format!("r.{c}")).join(", ");
        let (seed, step) = (layout.tuple("r"), layout.tuple("s"));
        let start = format!("({})", self.start.join(", "));
        let same = layout.same_sequence("r", "s");
        format!(
            "WITH RECURSIVE seq AS (
                (SELECT {ids} FROM {table} r WHERE {scope} AND {seed} > {start}
                  ORDER BY {ids} LIMIT 1)
                UNION ALL
                SELECT n.* FROM seq s CROSS JOIN LATERAL (
                    SELECT {ids} FROM {table} r WHERE {scope} AND {seed} > {step}
                     ORDER BY {ids} LIMIT 1) n
            ),
            heads AS (
                SELECT h.*, c.open, c.stuck, c.held
                  FROM seq s
                 CROSS JOIN LATERAL (
                    SELECT {columns} FROM {table} r WHERE {scope} AND {same}
                     ORDER BY r.{order} LIMIT 1) h
                 CROSS JOIN LATERAL (
                    SELECT {counts} FROM {table} r WHERE {scope} AND {same}) c
                 WHERE {head}
                 LIMIT {limit}
            )"
        )
    }

    /// A chunk: the heads, as many of them in order as fit in `budget` rows (a placeholder; NULL
    /// for no limit) when each costs `touch`, then `writes` (CTEs after a comma, over the chosen
    /// sequences `chosen`; empty for a count), and one row: `picked` (sequences read), `sequences`
    /// and `touched` (those that fit, and their rows), `changed` and `released` (expressions
    /// over the writes), and the id of the last chosen sequence. Read it with [`chunk_of`].
    pub fn chunk(
        &self,
        touch: &str,
        budget: &str,
        writes: &str,
        changed: &str,
        released: &str,
    ) -> String {
        let ids = self.layout.id.join(", ");
        let last = self.layout.id.map(|c| format!("l.{c}")).join(", ");
        format!(
            "{heads},
            budgeted AS (
                SELECT heads.*, {touch} AS touch,
                       sum({touch}) OVER (ORDER BY {ids}) AS running
                  FROM heads
            ),
            chosen AS (SELECT * FROM budgeted WHERE {budget}::int8 IS NULL OR running <= {budget}),
            totals AS (
                SELECT count(*) AS sequences, coalesce(sum(touch), 0)::int8 AS touched,
                       coalesce(sum(held), 0)::int8 AS held
                  FROM chosen
            ) {writes}
            SELECT (SELECT count(*) FROM budgeted) AS picked, t.sequences, t.touched,
                   {changed} AS changed, {released} AS released, {last}
              FROM totals t
              LEFT JOIN LATERAL (
                    SELECT {ids} FROM chosen ORDER BY running DESC LIMIT 1) l ON true",
            heads = self.heads(),
        )
    }
}

/// The [`Chunk`] a [`Walk::chunk`] statement returned, read `limit` sequences at most; `id`
/// reads the last chosen sequence's id from the row (`None` when none was chosen).
pub fn chunk_of<C>(
    row: &PgRow,
    limit: i64,
    id: impl FnOnce(&PgRow) -> Result<Option<C>, sqlx::Error>,
) -> Result<Chunk<C>, sqlx::Error> {
    let picked: i64 = row.try_get("picked")?;
    let sequences: i64 = row.try_get("sequences")?;
    let counted: i64 = row.try_get("touched")?;
    let changed: Option<i64> = row.try_get("changed")?;
    let released: i64 = row.try_get("released")?;
    // More may follow only when the chunk was full and every sequence of it fit the budget.
    let more = picked == limit && sequences == picked;
    let count = |n: i64| u64::try_from(n).unwrap_or_default();
    Ok(Chunk {
        sequences: count(sequences),
        touched: count(changed.unwrap_or(counted)),
        released: count(released),
        next: if more { id(row)? } else { None },
    })
}

/// A budget in rows as a statement parameter.
pub fn budget_param(budget: Option<u64>) -> Option<i64> {
    budget.map(|b| i64::try_from(b).unwrap_or(i64::MAX))
}
