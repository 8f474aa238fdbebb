//! The compute part of the page: add or sort typed numbers, at once or as
//! jobs; the job list follows the Callbacks stream.
//!
//! Invariant: everything goes through the same [`ComputeService`] the
//! gRPC port serves, called in-process with the session's [`Identity`] in
//! the request, so limits, the memory budget and job ownership are the
//! gRPC ones. "At once" is a job the handler waits for (its own client id,
//! so it does not show in the page's list).

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use distribusync_core::compute::{Number, Numbers, Order, parse_numbers};
use distribusync_proto::v1::{self, compute_server::Compute};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::session::{Signed, random_hex};
use super::{ApiError, ApiResult, Web, need};
use crate::auth::Identity;
use crate::compute::ComputeService;

/// The client id of the page's jobs (per token: job lists are per owner).
const WEB_CLIENT: &str = "web";
/// Numbers of a result sent to the page at most (the rest is counted).
const SHOWN_MAX: usize = 10_000;

fn service(web: &Web) -> ApiResult<&ComputeService> {
    web.compute.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server does not host compute (serve --services)",
        )
    })
}

fn request<T>(who: &Identity, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(who.clone());
    r
}

#[derive(Debug, Deserialize)]
pub(crate) struct Run {
    /// `add` or `sort`.
    op: String,
    /// Numbers as typed: separated by spaces, commas or lines.
    numbers: String,
    #[serde(default)]
    descending: bool,
    /// Queue as a job and answer at once.
    #[serde(default)]
    job: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Answer {
    job_id: String,
    sum: Option<String>,
    sorted: Option<Vec<String>>,
    count: u64,
}

fn shown(n: &Numbers) -> Vec<String> {
    match n {
        Numbers::Ints(v) => v
            .iter()
            .take(SHOWN_MAX)
            .map(|x| Number::Int(*x).to_string())
            .collect(),
        Numbers::Floats(v) => v
            .iter()
            .take(SHOWN_MAX)
            .map(|x| Number::Float(*x).to_string())
            .collect(),
    }
}

/// `POST /api/compute {op, numbers, descending, job}`.
pub(crate) async fn run(
    State(web): State<Web>,
    s: Signed,
    Json(body): Json<Run>,
) -> ApiResult<Json<Answer>> {
    need(&s.0.identity, "Compute/Submit")?;
    let svc = service(&web)?.clone();
    let numbers = parse_numbers(&body.numbers).map_err(|e| ApiError::bad(e.to_string()))?;
    if numbers.is_empty() {
        return Err(ApiError::bad("type at least one number"));
    }
    let count = numbers.len() as u64;
    let order = if body.descending {
        Order::Descending
    } else {
        Order::Ascending
    };
    let task = match body.op.as_str() {
        "add" => v1::submit_request::Task::Add(v1::AddTask {
            numbers: Some(numbers.into()),
        }),
        "sort" => v1::submit_request::Task::Sort(v1::SortTask {
            numbers: Some(numbers.into()),
            order: v1::SortOrder::from(order).into(),
        }),
        other => {
            return Err(ApiError::bad(format!(
                "unknown operation {:?}: add or sort",
                distribusync_core::echo(other)
            )));
        }
    };
    let who = s.0.identity.clone();
    let client_id = if body.job {
        WEB_CLIENT.to_owned()
    } else {
        format!("web-now-{}", &random_hex()[..16])
    };
    // Subscribed before submitting, so the result cannot pass unseen.
    let mut events = if body.job {
        None
    } else {
        let req = request(
            &who,
            v1::CallbacksRequest {
                client_id: client_id.clone(),
            },
        );
        Some(svc.callbacks(req).await?.into_inner())
    };
    let submitted = svc
        .submit(request(
            &who,
            v1::SubmitRequest {
                client_id,
                job_id: String::new(),
                deadline: None,
                task: Some(task),
            },
        ))
        .await?
        .into_inner();
    let Some(events) = events.as_mut() else {
        return Ok(Json(Answer {
            job_id: submitted.job_id,
            sum: None,
            sorted: None,
            count,
        }));
    };
    while let Some(ev) = events.next().await {
        let Some(job) = ev?.job else { continue };
        if job.job_id != submitted.job_id {
            continue;
        }
        let (sum, sorted) = outcome(&svc, &who, &job).await?;
        return Ok(Json(Answer {
            job_id: job.job_id,
            sum,
            sorted,
            count,
        }));
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    ))
}

/// A finished job's result as text, or its error.
async fn outcome(
    svc: &ComputeService,
    who: &Identity,
    job: &v1::Job,
) -> ApiResult<(Option<String>, Option<Vec<String>>)> {
    if job.state() != v1::JobState::Succeeded {
        let code = tonic::Code::from(job.error_code);
        return Err(tonic::Status::new(code, job.error.clone()).into());
    }
    if job.result_in_stream {
        let mut stream = svc
            .get_job_result(request(
                who,
                v1::GetJobRequest {
                    job_id: job.job_id.clone(),
                },
            ))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Some(n) = chunk?.numbers else { continue };
            let n: Numbers = n
                .try_into()
                .map_err(|_| ApiError::bad("a malformed result"))?;
            out.extend(shown(&n));
            if out.len() >= SHOWN_MAX {
                out.truncate(SHOWN_MAX);
                break;
            }
        }
        return Ok((None, Some(out)));
    }
    match job.result.as_ref().and_then(|r| r.value.clone()) {
        Some(v1::job_result::Value::Sum(n)) => {
            let n: Number = n
                .try_into()
                .map_err(|_| ApiError::bad("a malformed result"))?;
            Ok((Some(n.to_string()), None))
        }
        Some(v1::job_result::Value::Sorted(n)) => {
            let n: Numbers = n
                .try_into()
                .map_err(|_| ApiError::bad("a malformed result"))?;
            Ok((None, Some(shown(&n))))
        }
        None => Ok((None, None)),
    }
}

fn millis(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    let t = t?;
    let at = distribusync_proto::system_time(t)?;
    Some(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as i64,
    )
}

#[derive(Debug, Serialize)]
pub(crate) struct JobRow {
    id: String,
    kind: &'static str,
    state: &'static str,
    count: u64,
    submitted_ms: Option<i64>,
    finished_ms: Option<i64>,
    error: String,
}

fn row(j: &v1::Job) -> JobRow {
    JobRow {
        id: j.job_id.clone(),
        kind: match j.kind() {
            v1::JobKind::Add => "add",
            v1::JobKind::Sort => "sort",
            v1::JobKind::Unspecified => "?",
        },
        state: match j.state() {
            v1::JobState::Queued => "queued",
            v1::JobState::Running => "running",
            v1::JobState::Succeeded => "done",
            v1::JobState::Failed => "failed",
            v1::JobState::Cancelled => "cancelled",
            v1::JobState::DeadlineExceeded => "deadline exceeded",
            v1::JobState::Unspecified => "?",
        },
        count: j.count,
        submitted_ms: millis(j.submitted.as_ref()),
        finished_ms: millis(j.finished.as_ref()),
        error: j.error.clone(),
    }
}

/// `GET /api/jobs`: the page's jobs, newest first.
pub(crate) async fn jobs(State(web): State<Web>, s: Signed) -> ApiResult<Json<Vec<JobRow>>> {
    need(&s.0.identity, "Compute/ListJobs")?;
    let svc = service(&web)?;
    let list = svc
        .list_jobs(request(
            &s.0.identity,
            v1::ListJobsRequest {
                client_id: WEB_CLIENT.to_owned(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(list.jobs.iter().map(row).collect()))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResultQuery {
    id: String,
}

/// `GET /api/jobs/result?id=`: a finished job's result.
pub(crate) async fn result(
    State(web): State<Web>,
    s: Signed,
    Query(q): Query<ResultQuery>,
) -> ApiResult<Json<Answer>> {
    need(&s.0.identity, "Compute/GetJob")?;
    let svc = service(&web)?;
    let job = svc
        .get_job(request(&s.0.identity, v1::GetJobRequest { job_id: q.id }))
        .await?
        .into_inner();
    let (sum, sorted) = outcome(svc, &s.0.identity, &job).await?;
    Ok(Json(Answer {
        job_id: job.job_id,
        sum,
        sorted,
        count: job.count,
    }))
}

/// `GET /api/jobs/events`: an event each time one of the page's jobs
/// finishes (the Callbacks stream).
pub(crate) async fn events(
    State(web): State<Web>,
    s: Signed,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    need(&s.0.identity, "Compute/Callbacks")?;
    let svc = service(&web)?;
    let stream = svc
        .callbacks(request(
            &s.0.identity,
            v1::CallbacksRequest {
                client_id: WEB_CLIENT.to_owned(),
            },
        ))
        .await?
        .into_inner();
    let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let events = tokio_stream::StreamExt::map_while(stream, |ev| {
        let job = ev.ok()?.job?;
        Some(Ok(Event::default()
            .event("job")
            .json_data(row(&job))
            .unwrap_or_else(|_| {
                Event::default().event("job").data("{}")
            })))
    });
    Ok(
        Sse::new(ready.chain(events))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}
