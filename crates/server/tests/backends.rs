//! The storage backends behind the store's traits (issue 12): one suite of
//! metadata rules run against the local backend (SQLite) and against
//! PostgreSQL, then what only a shared database can show: two instances
//! racing, and a change through one reaching the feed of the other.
//!
//! PostgreSQL is a real server started once for this binary
//! (`common/postgres.rs`); each test has its own database.

#[path = "common/postgres.rs"]
mod postgres;

use std::time::Duration;

use distribusync_core::delta::{PARAMS_V1, manifest_of_bytes};
use distribusync_core::{ContentHash, RemotePath, Revision};
use distribusync_server::ServiceError;
use distribusync_server::store::{
    ChangeFeed, ChangeOp, ChangeRecord, FileRecord, JobOutcome, JobQueue, JobState, LocalJobQueue,
    LocalMetadata, Metadata, NewVersion, PgFeed, PgJobQueue, PgMetadata, SCHEMA_VERSION,
};
use postgres::postgres;
use tokio::sync::broadcast;

/// Generous: a loaded 2-core machine; only a safety net.
const WAIT: Duration = Duration::from_secs(30);

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

fn put(path: &str, if_revision: Option<Revision>) -> NewVersion {
    let hash = ContentHash::of(path.as_bytes());
    NewVersion {
        path: p(path),
        size: path.len() as u64,
        hash,
        modified_ns: 7,
        if_revision,
        manifest: None,
    }
}

async fn put_one(m: &dyn Metadata, v: NewVersion) -> Result<FileRecord, ServiceError> {
    let mut done = m.commit_puts(vec![v]).await.expect("the group commits");
    assert_eq!(done.len(), 1);
    done.pop().unwrap().map(|(record, _)| record)
}

async fn names(
    m: &dyn Metadata,
    prefix: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Vec<String> {
    m.list_page(prefix.map(p), after.map(str::to_owned), limit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect()
}

/// The next change a subscriber sees.
async fn next(live: &mut broadcast::Receiver<ChangeRecord>) -> ChangeRecord {
    tokio::time::timeout(WAIT, live.recv())
        .await
        .expect("a change is announced in time")
        .expect("the feed runs")
}

/// The rules every metadata backend keeps, and its feed announcing every
/// change, in order.
async fn metadata_rules(m: &dyn Metadata, feed: &dyn ChangeFeed) {
    let mut live = feed.subscribe();

    // Revisions come from one counter, without gaps.
    let done = m
        .commit_puts(vec![put("a", Some(0)), put("d/b", None)])
        .await
        .unwrap();
    let revs: Vec<u64> = done
        .iter()
        .map(|r| r.as_ref().unwrap().0.revision)
        .collect();
    assert_eq!(revs, [1, 2]);
    assert_eq!(m.get(p("a")).await.unwrap().unwrap().revision, 1);

    // In a group, a stale precondition fails alone; the others get the
    // next revisions in order.
    let done = m
        .commit_puts(vec![
            put("a", Some(2)),
            put("a", Some(1)),
            put("c", Some(0)),
        ])
        .await
        .unwrap();
    assert!(
        matches!(
            &done[0],
            Err(ServiceError::RevisionMismatch {
                expected: 2,
                current: 1,
                ..
            })
        ),
        "{:?}",
        done[0]
    );
    assert_eq!(done[1].as_ref().unwrap().0.revision, 3);
    assert_eq!(done[2].as_ref().unwrap().0.revision, 4);
    // "Must not exist" on a file that does.
    assert!(matches!(
        put_one(m, put("c", Some(0))).await,
        Err(ServiceError::RevisionMismatch { current: 4, .. })
    ));

    // Listings in byte order; a folder is exactly what lies inside it.
    for f in [
        "trips/a",
        "trips/2026/b",
        "trips-old/c",
        "tripsx",
        "trips0/d",
    ] {
        put_one(m, put(f, None)).await.unwrap();
    }
    assert_eq!(
        names(m, Some("trips"), None, 100).await,
        ["trips/2026/b", "trips/a"]
    );
    assert_eq!(names(m, None, None, 3).await, ["a", "c", "d/b"]);
    assert_eq!(
        names(m, None, Some("tripsx"), 10).await,
        Vec::<String>::new()
    );
    assert_eq!(names(m, None, Some("trips/a"), 1).await, ["trips0/d"]);
    assert!(m.is_folder(p("trips")).await.unwrap());
    assert!(!m.is_folder(p("trips/a")).await.unwrap());

    // Deletes: each refusal says why, and records nothing.
    assert!(matches!(
        m.commit_delete(p("nothing"), None).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        m.commit_delete(p("d"), None).await,
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        m.commit_delete(p("c"), Some(1)).await,
        Err(ServiceError::RevisionMismatch { current: 4, .. })
    ));
    let deleted = m.commit_delete(p("c"), Some(4)).await.unwrap();
    assert_eq!((deleted.seq, deleted.op), (10, ChangeOp::Delete));
    assert_eq!(m.get(p("c")).await.unwrap(), None);

    // Renames: the store's rules, checked in the committing transaction.
    assert!(matches!(
        m.commit_rename(p("a"), p("d/b"), false, None).await,
        Err(ServiceError::AlreadyExists(_))
    ));
    assert!(matches!(
        m.commit_rename(p("d"), p("trips"), false, None).await,
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        m.commit_rename(p("d"), p("e"), false, Some(2)).await,
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        m.commit_rename(p("trips"), p("trips/x"), false, None).await,
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        m.commit_rename(p("a"), p("z"), false, Some(1)).await,
        Err(ServiceError::RevisionMismatch { current: 3, .. })
    ));
    // A folder moves as one change; its files take its revision.
    let (change, moved) = m
        .commit_rename(p("trips"), p("t"), false, None)
        .await
        .unwrap();
    assert_eq!(
        (change.seq, change.op, change.folder, moved),
        (11, ChangeOp::Rename, true, 2)
    );
    assert_eq!(names(m, Some("t"), None, 100).await, ["t/2026/b", "t/a"]);
    assert_eq!(m.get(p("t/2026/b")).await.unwrap().unwrap().revision, 11);
    assert!(!m.is_folder(p("trips")).await.unwrap());
    assert_eq!(
        names(m, None, Some("t/a"), 10).await,
        ["trips-old/c", "trips0/d", "tripsx"]
    );
    // A file replaces another only when asked.
    let (change, moved) = m
        .commit_rename(p("a"), p("d/b"), true, Some(3))
        .await
        .unwrap();
    assert_eq!((change.seq, change.folder, moved), (12, false, 1));
    assert_eq!(m.get(p("a")).await.unwrap(), None);
    let b = m.get(p("d/b")).await.unwrap().unwrap();
    assert_eq!((b.revision, b.hash), (12, ContentHash::of(b"a")));

    // The log has every change, in order, without gaps.
    let log = m.changes_since(0, 100).await.unwrap();
    let seqs: Vec<u64> = log.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(m.changes_since(10, 1).await.unwrap()[0].seq, 11);
    assert_eq!(m.log_bounds().await.unwrap(), (0, 12));

    // The feed announced each change once it committed, in order.
    for want in &log {
        assert_eq!(&next(&mut live).await, want);
    }

    // A manifest is answered for the revision it was recorded with only.
    let mut data = vec![0u8; 4_000_000];
    blake3::Hasher::new()
        .update(b"backends")
        .finalize_xof()
        .fill(&mut data);
    let manifest = manifest_of_bytes(&data, &PARAMS_V1);
    assert!(manifest.chunks.len() > 1);
    let with = NewVersion {
        size: manifest.size,
        hash: manifest.hash,
        manifest: Some(manifest.clone()),
        ..put("m.bin", None)
    };
    let first = put_one(m, with).await.unwrap();
    assert_eq!(
        m.manifest(p("m.bin"), first.revision).await.unwrap(),
        Some(manifest.clone())
    );
    let second = put_one(m, put("m.bin", None)).await.unwrap();
    assert_eq!(m.manifest(p("m.bin"), second.revision).await.unwrap(), None);
    assert_eq!(m.manifest(p("m.bin"), first.revision).await.unwrap(), None);
    // One that does not describe the content is not recorded.
    let wrong = NewVersion {
        manifest: Some(manifest),
        ..put("m.bin", None)
    };
    let third = put_one(m, wrong).await.unwrap();
    assert_eq!(m.manifest(p("m.bin"), third.revision).await.unwrap(), None);
}

#[tokio::test]
async fn the_local_backend_keeps_the_metadata_rules() {
    let dir = tempfile::tempdir().unwrap();
    let m = LocalMetadata::open(&dir.path().join("index.db"), 1000).unwrap();
    metadata_rules(&m, &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_backend_keeps_the_metadata_rules() {
    let url = postgres().database("rules");
    let m = PgMetadata::open(&url, 1000).await.unwrap();
    let feed = PgFeed::start(m.clone()).await.unwrap();
    metadata_rules(&m, &feed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_if_revision_writers_on_two_instances_exactly_one_wins() {
    let url = postgres().database("race");
    let a = PgMetadata::open(&url, 1000).await.unwrap();
    let b = PgMetadata::open(&url, 1000).await.unwrap();
    // Creators racing on a new file, then editors on its current revision.
    let mut expected = Some(0);
    for round in 0..20 {
        let (ra, rb) = tokio::join!(
            tokio::spawn({
                let a = a.clone();
                async move { put_one(&a, put("doc", expected)).await }
            }),
            tokio::spawn({
                let b = b.clone();
                async move { put_one(&b, put("doc", expected)).await }
            }),
        );
        let (winner, loser) = match (ra.unwrap(), rb.unwrap()) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (ra, rb) => panic!("round {round}: not exactly one winner: {ra:?} / {rb:?}"),
        };
        match loser {
            ServiceError::RevisionMismatch { current, .. } => assert_eq!(current, winner.revision),
            other => panic!("round {round}: the loser got {other:?}"),
        }
        expected = Some(winner.revision);
    }
    // Every win is one change; nothing else was recorded.
    let (_, newest) = a.log_bounds().await.unwrap();
    assert_eq!(newest, 20);
    assert_eq!(b.get(p("doc")).await.unwrap().unwrap().revision, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_through_both_instances_reach_a_feed_in_order_without_gaps() {
    let url = postgres().database("feed");
    let a = PgMetadata::open(&url, 1000).await.unwrap();
    let b = PgMetadata::open(&url, 1000).await.unwrap();
    let feed_b = PgFeed::start(b.clone()).await.unwrap();
    let mut live = feed_b.subscribe();
    // One change through A alone first: it reaches B's feed.
    put_one(&a, put("from-a", None)).await.unwrap();
    let first = next(&mut live).await;
    assert_eq!((first.seq, first.path.as_str()), (1, "from-a"));
    // Then writers on both instances at once.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let m = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            put_one(&m, put(&format!("f{i}"), None)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen: Vec<u64> = {
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(next(&mut live).await.seq);
        }
        seen
    };
    assert_eq!(seen, (2..=41).collect::<Vec<_>>());
    // Each change's revision is that of the file it names.
    for c in a.changes_since(1, 100).await.unwrap() {
        assert_eq!(
            a.get(c.path.clone()).await.unwrap().unwrap().revision,
            c.seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_version_is_refused_in_one_line() {
    let url = postgres().database("newer");
    drop(PgMetadata::open(&url, 1000).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE distribusync_schema SET version = $1",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let e = PgMetadata::open(&url, 1000).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("schema version {}", SCHEMA_VERSION + 1)) && e.contains("newer"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // Reopening at the same version is fine (the schema is made once).
    let other = postgres().database("same");
    drop(PgMetadata::open(&other, 1000).await.unwrap());
    PgMetadata::open(&other, 1000).await.unwrap();
}

#[tokio::test]
async fn bad_metadata_urls_are_refused_in_one_line_without_the_password() {
    let cases = [
        (
            "postgres://ds:s3cret@127.0.0.1:notaport/ds".to_owned(),
            "not a PostgreSQL URL",
        ),
        (
            // A port nothing listens on.
            {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                format!("postgres://ds:s3cret@127.0.0.1:{port}/ds?connect_timeout=5")
            },
            "cannot reach the metadata database postgres://ds@127.0.0.1:",
        ),
    ];
    for (url, want) in cases {
        let e = PgMetadata::open(&url, 1000).await.unwrap_err().to_string();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_is_named() {
    let url = postgres().url("no_such_database");
    let e = PgMetadata::open(&url, 1000).await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the metadata database"), "{e}");
    assert!(e.contains("no_such_database"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_whose_session_is_cut_listens_again_and_loses_nothing() {
    let url = postgres().database("cut");
    let m = PgMetadata::open(&url, 1000).await.unwrap();
    let feed = PgFeed::start(m.clone()).await.unwrap();
    let mut live = feed.subscribe();
    put_one(&m, put("before", None)).await.unwrap();
    assert_eq!(next(&mut live).await.seq, 1);
    // The server ends the feed's listening session (as a restart of the
    // database, or a proxy timing it out, would).
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let cut = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "one listening session");
    // Changes committed meanwhile still arrive, in order.
    for name in ["during-1", "during-2"] {
        put_one(&m, put(name, None)).await.unwrap();
    }
    assert_eq!(next(&mut live).await.path.as_str(), "during-1");
    assert_eq!(next(&mut live).await.path.as_str(), "during-2");
}

/// A lease no test outlives.
const LONG: Duration = Duration::from_secs(600);

/// The rules every job queue keeps (made with at most 3 attempts). A
/// worker that dies is one whose lease runs out: here a lease of zero, so
/// that no test waits for a clock.
async fn queue_rules(q: &dyn JobQueue) {
    assert_eq!(q.claim("w".into(), LONG).await.unwrap(), None);
    let id = q
        .submit("alice".into(), b"sort 3 1 2".to_vec())
        .await
        .unwrap();
    let rec = q.get(id.clone()).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.owner.as_str(), rec.attempts),
        (JobState::Queued, "alice", 0)
    );

    // Killed mid-job: the job runs again elsewhere, as a new attempt.
    let dead = q
        .claim("dead".into(), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((dead.id.as_str(), dead.attempt), (id.as_str(), 1));
    assert_eq!(dead.payload, b"sort 3 1 2");
    let alive = q.claim("alive".into(), LONG).await.unwrap().unwrap();
    assert_eq!((alive.id.as_str(), alive.attempt), (id.as_str(), 2));
    // Held by a live worker: nobody else gets it.
    assert_eq!(q.claim("third".into(), LONG).await.unwrap(), None);
    // It completes once: the dead worker's late outcome is dropped.
    let done = |r: &[u8]| JobOutcome::Done(r.to_vec());
    assert!(
        !q.finish(id.clone(), "dead".into(), 1, done(b"wrong"))
            .await
            .unwrap()
    );
    assert!(
        q.finish(id.clone(), "alive".into(), 2, done(b"1 2 3"))
            .await
            .unwrap()
    );
    assert!(
        !q.finish(id.clone(), "alive".into(), 2, done(b"again"))
            .await
            .unwrap()
    );
    let rec = q.get(id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Done, 2));
    assert_eq!(rec.result.as_deref(), Some(&b"1 2 3"[..]));

    // Attempts are bounded: after three workers died, the job fails, saying so.
    let id = q.submit("bob".into(), b"add 1 2".to_vec()).await.unwrap();
    for attempt in 1..=3 {
        let c = q
            .claim(format!("w{attempt}"), Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c.id.as_str(), c.attempt), (id.as_str(), attempt));
    }
    assert_eq!(q.claim("w4".into(), LONG).await.unwrap(), None);
    let rec = q.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert!(
        rec.error
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 3 attempts"),
        "{rec:?}"
    );

    // Oldest first; a failure is recorded as the worker said.
    let a = q.submit("carol".into(), b"a".to_vec()).await.unwrap();
    let b = q.submit("carol".into(), b"b".to_vec()).await.unwrap();
    let first = q.claim("w".into(), LONG).await.unwrap().unwrap();
    let second = q.claim("w".into(), LONG).await.unwrap().unwrap();
    assert_eq!(
        (first.id.as_str(), second.id.as_str()),
        (a.as_str(), b.as_str())
    );
    let failed = JobOutcome::Failed("overflow".into());
    assert!(q.finish(b.clone(), "w".into(), 1, failed).await.unwrap());
    assert_eq!(
        q.get(b).await.unwrap().unwrap().error.as_deref(),
        Some("overflow")
    );
}

#[tokio::test]
async fn the_local_job_queue_keeps_the_queue_rules() {
    queue_rules(&LocalJobQueue::new(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_job_queue_keeps_the_queue_rules() {
    let url = postgres().database("queue");
    let q = PgJobQueue::open(PgMetadata::open(&url, 1000).await.unwrap(), 3)
        .await
        .unwrap();
    queue_rules(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_two_instances_run_each_job_exactly_once() {
    let url = postgres().database("workers");
    let a = PgJobQueue::open(PgMetadata::open(&url, 1000).await.unwrap(), 3)
        .await
        .unwrap();
    let b = PgJobQueue::open(PgMetadata::open(&url, 1000).await.unwrap(), 3)
        .await
        .unwrap();
    let mut submitted = Vec::new();
    for i in 0..30u8 {
        submitted.push(a.submit("alice".into(), vec![i]).await.unwrap());
    }
    // Three workers on each instance, claiming at once until nothing is left.
    let mut workers = Vec::new();
    for w in 0..6 {
        let q = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            let mut ran = Vec::new();
            while let Some(job) = q.claim(name.clone(), LONG).await.unwrap() {
                let result = vec![job.payload[0] * 2];
                assert!(
                    q.finish(
                        job.id.clone(),
                        name.clone(),
                        job.attempt,
                        JobOutcome::Done(result)
                    )
                    .await
                    .unwrap()
                );
                ran.push(job.id);
            }
            ran
        }));
    }
    let mut ran = Vec::new();
    for w in workers {
        ran.extend(w.await.unwrap());
    }
    ran.sort();
    submitted.sort();
    assert_eq!(ran, submitted, "every job ran, none twice");
    for id in submitted {
        let rec = b.get(id).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts), (JobState::Done, 1));
    }
}

/// In PostgreSQL a manifest follows its file through renames (in the
/// cluster backend it is where the content is), under the new revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_backend_moves_a_manifest_with_its_file() {
    let url = postgres().database("manifest_moves");
    let m = PgMetadata::open(&url, 1000).await.unwrap();
    let mut data = vec![0u8; 2_000_000];
    blake3::Hasher::new()
        .update(b"moves")
        .finalize_xof()
        .fill(&mut data);
    let manifest = manifest_of_bytes(&data, &PARAMS_V1);
    let with = NewVersion {
        size: manifest.size,
        hash: manifest.hash,
        manifest: Some(manifest.clone()),
        ..put("d/a.bin", None)
    };
    put_one(&m, with).await.unwrap();
    let (change, _) = m
        .commit_rename(p("d/a.bin"), p("d/b.bin"), false, None)
        .await
        .unwrap();
    assert_eq!(
        m.manifest(p("d/b.bin"), change.seq).await.unwrap(),
        Some(manifest.clone())
    );
    let (change, moved) = m.commit_rename(p("d"), p("e"), false, None).await.unwrap();
    assert_eq!(moved, 1);
    assert_eq!(
        m.manifest(p("e/b.bin"), change.seq).await.unwrap(),
        Some(manifest)
    );
    assert_eq!(m.manifest(p("d/b.bin"), change.seq).await.unwrap(), None);
}
