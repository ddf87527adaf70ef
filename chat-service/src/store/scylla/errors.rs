//! What a CQL failure means for the caller (retry later or needs an operator), and reading
//! result rows.

use super::*;

pub(super) fn attempt_unavailable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
        ),
        _ => false,
    }
}

/// Connection problems, timeouts and "not enough replicas" are retry-later; the rest (bad
/// statements, type mismatches) need an operator.
pub(crate) fn classify(e: ExecutionError) -> StoreError {
    let unavailable = match &e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_unavailable(a),
        ExecutionError::PrepareError(p) => prepare_unavailable(p),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

pub(super) fn prepare_unavailable(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_unavailable(first_attempt),
        _ => false,
    }
}

pub(crate) fn classify_prepare(e: PrepareError) -> StoreError {
    if prepare_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

pub(super) fn classify_session(e: NewSessionError) -> StoreError {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            StoreError::Internal(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A result that cannot be read as the expected rows: the schema and the code disagree.
pub(super) fn decode(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected CQL result: {e}"))
}

pub(crate) fn rows<R>(result: QueryResult) -> StoreResult<Vec<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = result.into_rows_result().map_err(decode)?;
    rows.rows::<R>()
        .map_err(decode)?
        .collect::<Result<Vec<R>, _>>()
        .map_err(decode)
}

pub(crate) fn first_row<R>(result: QueryResult) -> StoreResult<Option<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = result.into_rows_result().map_err(decode)?;
    rows.maybe_first_row::<R>().map_err(decode)
}

/// Whether a lightweight transaction applied (its first column is `[applied]`).
pub(super) fn applied(result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(decode)?;
    let (i, _) = rows
        .column_specs()
        .get_by_name("[applied]")
        .ok_or_else(|| decode("no [applied] column"))?;
    let row: scylla::value::Row = rows.first_row().map_err(decode)?;
    match row.columns.get(i) {
        Some(Some(scylla::value::CqlValue::Boolean(b))) => Ok(*b),
        other => Err(decode(format!("[applied] is {other:?}"))),
    }
}
