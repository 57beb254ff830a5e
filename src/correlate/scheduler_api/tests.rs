use super::cache::*;
use super::*;

const L: &str = "projects/acme-prod/locations/us-east1";

fn key(id: &str) -> JobKey {
    JobKey::new("acme-prod", "us-east1", id).unwrap()
}

fn job(k: &JobKey) -> JobConfig {
    JobConfig::from_value(serde_json::json!({
        "name": k.name(),
        "httpTarget": {"uri": "https://x.a.run.app/"}
    }))
    .unwrap()
}

fn cache() -> Cache {
    Cache::new(&SchedulerApiConfig::default())
}

fn needs(ids: &[&str], opening: bool) -> FxHashMap<JobKey, bool> {
    ids.iter().map(|id| (key(id), opening)).collect()
}

fn started(plan: &Plan) -> Vec<Fetch> {
    let mut f: Vec<Fetch> = plan.start.iter().map(|(f, _)| f.clone()).collect();
    f.sort_by_key(|f| format!("{f:?}"));
    f
}

fn not_found() -> Failed {
    Failed {
        error: ApiError::Call("Job not found.".into()),
        heard: Heard::NotFound,
    }
}

fn no_answer() -> Failed {
    Failed {
        error: ApiError::Timeout(Duration::from_secs(5)),
        heard: Heard::Nothing,
    }
}

/// Ends a planned call as its task does: out of the in-flight map.
fn finish(c: &mut Cache, f: &Fetch) {
    c.in_flight.remove(f);
}

#[test]
fn the_expiring_map_forgets_the_expired_and_beyond_capacity_the_oldest() {
    let t = Instant::now();
    let mut m = Expiring::new(Duration::from_secs(60), 3);
    for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
        m.insert(*k, i, t + Duration::from_secs(i as u64));
    }
    assert_eq!(m.map.len(), 3, "capacity 3");
    assert!(m.get(&"a", t).is_none(), "the oldest went first");
    assert_eq!(
        m.get(&"d", t + Duration::from_secs(3)).map(|(_, v)| *v),
        Some(3)
    );
    assert!(
        m.get(&"b", t + Duration::from_secs(61)).is_none(),
        "expired"
    );
    // Replacing a key many times holds one entry, and the order queue stays bounded.
    for i in 0..100 {
        m.insert("d", i, t + Duration::from_secs(4));
    }
    assert!(m.order.len() <= 6, "{}", m.order.len());
    assert_eq!(
        m.get(&"d", t + Duration::from_secs(4)).map(|(_, v)| *v),
        Some(99)
    );
    // Everything expired is dropped by the next insert: memory comes back after a flood.
    m.insert("e", 0, t + Duration::from_secs(200));
    assert_eq!(m.map.len(), 1);
    assert_eq!(m.order.len(), 1);
}

#[test]
fn two_unknown_jobs_of_a_location_are_listed_one_is_got() {
    let now = Instant::now();
    let mut c = cache();
    let plan = c.plan(&needs(&["a"], true), now, now);
    assert_eq!(started(&plan), vec![Fetch::Get(key("a"))]);
    assert_eq!(plan.wait.len(), 1);

    let mut c = cache();
    let plan = c.plan(&needs(&["a", "b", "c"], true), now, now);
    assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
    let wanted = &plan.start[0].1;
    assert_eq!(
        wanted.len(),
        3,
        "the listing keeps the configs of every job it is for"
    );
    assert!(c.in_flight.contains_key(&Fetch::List(L.into())));

    // Another location's single job is a GetJob of its own.
    let mut n = needs(&["a", "b"], true);
    n.insert(JobKey::new("acme-prod", "other", "x").unwrap(), true);
    let plan = cache().plan(&n, now, now);
    assert_eq!(
        started(&plan),
        vec![
            Fetch::Get(JobKey::new("acme-prod", "other", "x").unwrap()),
            Fetch::List(L.into())
        ]
    );
}

#[test]
fn a_job_absent_from_a_fresh_listing_is_not_found_without_a_call() {
    let now = Instant::now();
    let mut c = cache();
    let plan = c.plan(&needs(&["a", "ghost-1"], true), now, now);
    let wanted = plan.start[0].1.clone();
    finish(&mut c, &plan.start[0].0);
    // Page 2's job is there as well as page 1's: the listing is every page.
    c.listed(
        L.into(),
        &wanted,
        Ok((vec![job(&key("a")), job(&key("b"))], true)),
        now,
    );
    assert!(c.answer(&key("a"), Some(now), false, now).unwrap().is_ok());
    let later = now + Duration::from_secs(30);
    for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
        let e = c
            .answer(&key(ghost), None, false, later)
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, ApiError::NotListed(_)), "{e}");
    }
    let plan = c.plan(
        &needs(&["ghost-2", "ghost-3", "ghost-4"], true),
        later,
        later,
    );
    assert!(
        plan.start.is_empty() && plan.wait.is_empty(),
        "no call at all"
    );
    // A listed job whose config was not wanted is fetched alone, not listed again.
    let plan = c.plan(&needs(&["b", "ghost-5"], false), later, later);
    assert_eq!(started(&plan), vec![Fetch::Get(key("b"))]);
    // After error_ttl, the listing is stale: the location is listed again.
    let stale = now + Duration::from_secs(61);
    let mut c2 = cache();
    c2.listed(L.into(), &wanted, Ok((vec![], true)), now);
    let plan = c2.plan(&needs(&["ghost-1", "ghost-2"], true), stale, stale);
    assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
}

#[test]
fn after_a_not_found_the_next_unknown_job_of_the_location_is_listed() {
    let now = Instant::now();
    let mut c = cache();
    let plan = c.plan(&needs(&["ghost-1"], true), now, now);
    finish(&mut c, &plan.start[0].0);
    c.got(key("ghost-1"), Err(not_found()), now);
    let plan = c.plan(&needs(&["ghost-2"], true), now, now);
    assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
}

#[test]
fn a_failed_look_up_is_remembered_for_error_ttl_in_a_bounded_cache() {
    let now = Instant::now();
    let mut c = cache();
    c.got(key("ghost"), Err(not_found()), now);
    let soon = now + Duration::from_secs(59);
    let plan = c.plan(&needs(&["ghost"], true), soon, soon);
    assert!(plan.start.is_empty(), "remembered: no second call");
    let e = c.answer(&key("ghost"), Some(soon), true, soon).unwrap();
    assert!(e.unwrap_err().to_string().contains("Job not found"));
    let later = now + Duration::from_secs(60);
    assert!(
        c.answer(&key("ghost"), None, true, later).is_none(),
        "asked again"
    );

    // A flood of forged ids: memory stays at the capacity.
    for i in 0..FAILURE_CAPACITY + 500 {
        c.got(
            JobKey::new("acme-prod", "us-east1", &format!("forged-{i}")).unwrap(),
            Err(not_found()),
            now,
        );
    }
    assert_eq!(c.failures.map.len(), FAILURE_CAPACITY);
    assert!(c.failures.order.len() <= 2 * FAILURE_CAPACITY);
}

#[test]
fn a_call_in_flight_is_waited_for_not_made_twice() {
    let now = Instant::now();
    let mut c = cache();
    let first = c.plan(&needs(&["a", "b"], true), now, now);
    assert_eq!(first.start.len(), 1);
    // The next batch, while the listing runs: it waits for it, starts nothing.
    let second = c.plan(&needs(&["c"], true), now, now);
    assert!(second.start.is_empty());
    assert_eq!(second.wait.len(), 1);
}

#[test]
fn an_api_that_did_not_answer_is_not_asked_until_error_ttl_or_an_answer() {
    let now = Instant::now();
    let mut c = cache();
    c.got(key("known"), Ok(job(&key("known"))), now);
    let plan = c.plan(&needs(&["a"], true), now, now);
    finish(&mut c, &plan.start[0].0);
    c.got(key("a"), Err(no_answer()), now);
    assert!(c.silent(now));
    // No new call, not even a refresh of a known job, whose cached config is used instead.
    let soon = now + Duration::from_secs(1);
    let plan = c.plan(&needs(&["b", "c", "known"], true), soon, soon);
    assert!(plan.start.is_empty() && plan.wait.is_empty());
    assert!(c
        .answer(&key("known"), Some(soon), true, soon)
        .unwrap()
        .is_ok());
    let e = c.unanswered(&key("b"), Duration::from_secs(5), soon);
    assert!(matches!(e, ApiError::NotAsked(_)), "{e}");
    // An answer (a "not found" too) ends the silence.
    c.got(key("x"), Err(not_found()), soon);
    assert!(!c.silent(soon));
    assert_eq!(c.plan(&needs(&["b"], true), soon, soon).start.len(), 1);
    // And so does error_ttl.
    let mut c = cache();
    c.got(key("a"), Err(no_answer()), now);
    assert!(!c.silent(now + Duration::from_secs(60)));
}

#[test]
fn an_opening_incident_fetches_a_config_older_than_its_batch_again() {
    let now = Instant::now();
    let mut c = cache();
    c.got(key("a"), Ok(job(&key("a"))), now);
    let batch = now + Duration::from_secs(1);
    assert!(c.plan(&needs(&["a"], false), batch, batch).start.is_empty());
    assert_eq!(
        started(&c.plan(&needs(&["a"], true), batch, batch)),
        vec![Fetch::Get(key("a"))]
    );
    // Fetched for this batch: no further call when a second incident opens in it.
    let mut c = cache();
    c.got(key("a"), Ok(job(&key("a"))), batch);
    assert!(c.plan(&needs(&["a"], true), batch, batch).start.is_empty());
    // A refresh that got no answer leaves the cached config in use; a 404 replaces it.
    let mut c = cache();
    c.got(key("a"), Ok(job(&key("a"))), now);
    c.got(key("a"), Err(no_answer()), batch);
    assert!(c
        .answer(&key("a"), Some(batch), true, batch)
        .unwrap()
        .is_ok());
    c.got(key("a"), Err(not_found()), batch);
    assert!(c
        .answer(&key("a"), Some(batch), true, batch)
        .unwrap()
        .is_err());
}

#[test]
fn calls_waiting_are_bounded() {
    let now = Instant::now();
    let mut c = cache();
    let many: FxHashMap<JobKey, bool> = (0..MAX_PENDING + 10)
        .map(|i| {
            (
                JobKey::new(&format!("proj-{i:04}"), "us-east1", "j").unwrap(),
                true,
            )
        })
        .collect();
    let plan = c.plan(&many, now, now);
    assert_eq!(plan.start.len(), MAX_PENDING);
    assert_eq!(c.in_flight.len(), MAX_PENDING);
}

#[test]
fn a_listing_keeps_only_jobs_of_the_location_it_listed() {
    let now = Instant::now();
    let mut c = cache();
    let elsewhere = JobKey::new("acme-prod", "elsewhere", "a").unwrap();
    let wanted: FxHashSet<JobKey> = [key("a"), elsewhere.clone()].into_iter().collect();
    c.listed(
        L.into(),
        &wanted,
        Ok((vec![job(&elsewhere), job(&key("a"))], true)),
        now,
    );
    assert!(c.configs.get(&elsewhere, now).is_none());
    assert!(c.configs.get(&key("a"), now).is_some());
}
