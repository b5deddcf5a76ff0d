//! Table → index: scan pages planned as the function would, their documents fetched and
//! compared; differences confirmed by a second read; repair through the handler.

use super::*;

/// An item (by position) that drifted, and where.
pub(super) struct Found {
    pub(super) item: usize,
    pub(super) kind: Drift,
    pub(super) index: String,
    pub(super) id: String,
    pub(super) unindexable: bool,
}

impl Verifier<'_> {
    pub(super) async fn table_side(&self) -> Result<(), VerifyError> {
        let parallel = match self.opts.segments {
            Some(n) => n,
            None => table::default_segments(
                table::table_size(self.ddb, self.table())
                    .await
                    .map_err(|e| VerifyError(e.to_string()))?
                    .1,
                self.indexer.config.bulk_concurrency,
            ),
        };
        let (total, chosen) = segments_to_check(parallel, self.opts.sample, self.opts.seed);
        if let Some(fraction) = self.opts.sample {
            self.report.lock().expect("not poisoned").sample = Some(SampleReport {
                fraction,
                seed: self.opts.seed,
                segments_checked: chosen.len() as u32,
                total_segments: total,
                ..SampleReport::default()
            });
        }
        let results = futures::future::join_all(
            chosen
                .into_iter()
                .map(|segment| self.scan_segment(segment, total)),
        )
        .await;
        results.into_iter().collect()
    }

    pub(super) async fn scan_segment(&self, segment: u32, total: u32) -> Result<(), VerifyError> {
        let mut start: Option<Item> = None;
        loop {
            // Taken before the read: versions from it are never too high (backfill).
            let read_at = SystemTime::now();
            let page = self
                .ddb
                .scan()
                .table_name(self.table())
                .segment(segment as i32)
                .total_segments(total as i32)
                .consistent_read(true)
                .limit(self.opts.page_size as i32)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    self.fail(
                        &format!("Scan {} segment {segment}", self.table()),
                        crate::telemetry::error_chain(&e),
                    )
                })?;
            self.charge(page.consumed_capacity.as_ref()).await;
            let items = page.items.unwrap_or_default();
            if !items.is_empty() {
                self.check_items(items, read_at).await?;
            }
            match page.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(k) => start = Some(k),
                None => return Ok(()),
            }
        }
    }

    /// Table → index for one page of items: judged, drift confirmed on a second read, counted,
    /// repaired.
    pub(super) async fn check_items(
        &self,
        items: Vec<Item>,
        read_at: SystemTime,
    ) -> Result<(), VerifyError> {
        let (first, skipped) = self.judge_items(&items, read_at).await?;
        let mut confirmed = Vec::new();
        let mut fresh = Vec::new();
        let mut fresh_at = read_at;
        if !first.is_empty() {
            // A change the stream delivered between the scan and the `_mget` is not drift: read
            // the item and fetch the document again.
            fresh_at = SystemTime::now();
            fresh = self
                .batch_get(first.iter().map(|f| self.key_of(&items[f.item])).collect())
                .await?;
            confirmed = self.judge_items(&fresh, fresh_at).await?.0;
        }
        {
            let mut r = self.report.lock().expect("not poisoned");
            r.items += items.len() as u64;
            r.skipped += skipped;
            for f in &confirmed {
                r.count(f.kind, &f.index, &f.id, self.opts.examples);
                r.unindexable += u64::from(f.unindexable);
            }
        }
        self.progress
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        // The function quarantines unindexable items; writing them again would only add entries.
        let repair: Vec<Item> = confirmed
            .iter()
            .filter(|f| !f.unindexable)
            .map(|f| fresh[f.item].clone())
            .collect();
        if self.opts.repair && !repair.is_empty() {
            self.repair_items(&repair, fresh_at).await?;
        }
        Ok(())
    }

    /// Items read at `read_at` as the backfill hands them to the function: a synthetic batch
    /// and its read-time versions.
    pub(super) fn as_batch(&self, items: &[Item], read_at: SystemTime) -> (String, VersionSource) {
        let (versions, secs) = read_time::read_versions(
            read_at,
            self.opts.clock_skew,
            self.indexer.config.version_attribute.as_deref(),
        );
        let payload = read_time::synthetic_batch(self.table(), &self.key_names, items, secs);
        (payload, versions)
    }

    /// The function's plan of a batch from [`Verifier::as_batch`].
    pub(super) fn plan<'p>(
        &self,
        payload: &'p str,
        versions: &VersionSource,
    ) -> Result<plan::Plan<'p>, VerifyError> {
        let config = &self.indexer.config;
        plan::plan(payload, versions, &config.shape(), config.bulk_max_bytes)
            .map_err(|e| self.fail("planning a page", e))
    }

    /// Plans `items` as the function would and compares each document it would write with the
    /// one in the index. Returns the drifted items and how many are routed to no index.
    pub(super) async fn judge_items(
        &self,
        items: &[Item],
        read_at: SystemTime,
    ) -> Result<(Vec<Found>, u64), VerifyError> {
        let config = &self.indexer.config;
        let (payload, versions) = self.as_batch(items, read_at);
        let plan = self.plan(&payload, &versions)?;
        let mut found = Vec::new();
        let mut skipped = 0;
        let mut wanted: Vec<(usize, &Change)> = Vec::new();
        for (pos, r) in plan.records.iter().enumerate() {
            match &r.disposition {
                Disposition::Change(i) | Disposition::Superseded(i) => {
                    let c = &plan.changes[*i];
                    if c.action == Action::Index {
                        wanted.push((pos, c));
                    }
                }
                Disposition::Skipped => skipped += 1,
                Disposition::Invalid(_) => found.push(Found {
                    item: pos,
                    kind: Drift::Missing,
                    index: config.index.clone().unwrap_or_default(),
                    id: self.id_of(&items[pos]),
                    unindexable: true,
                }),
            }
        }
        let docs = self
            .mget(wanted.iter().map(|(_, c)| (&*c.index, c.id.as_str())))
            .await?;
        for ((pos, c), doc) in wanted.into_iter().zip(docs) {
            let kind = match doc {
                None => Some(Drift::Missing),
                Some(source) => {
                    let want = std::str::from_utf8(c.document().unwrap_or(b"{}"))
                        .expect("documents are UTF-8");
                    (self.comparable(want)? != self.comparable(source.get())?)
                        .then_some(Drift::Different)
                }
            };
            if let Some(kind) = kind {
                found.push(Found {
                    item: pos,
                    kind,
                    index: c.index.to_string(),
                    id: c.id.clone(),
                    unindexable: false,
                });
            }
        }
        Ok((found, skipped))
    }

    /// A document in canonical form without its metadata fields.
    pub(super) fn comparable(&self, json: &str) -> Result<String, VerifyError> {
        canonical_without(json, &self.metadata).map_err(|e| self.fail("canonical form", e))
    }

    /// Re-indexes items read at `read_at` through the function's path with read-time versions.
    pub(super) async fn repair_items(
        &self,
        items: &[Item],
        read_at: SystemTime,
    ) -> Result<(), VerifyError> {
        let (payload, versions) = self.as_batch(items, read_at);
        let handled = self
            .indexer
            .handle_versioned(&payload, Instant::now() + self.opts.timeout, &versions)
            .await
            .map_err(|e| self.fail("repair", e))?;
        let mut r = self.report.lock().expect("not poisoned");
        let done = r.repair.get_or_insert_default();
        for o in handled.outcomes {
            *match o {
                RecordOutcome::Indexed => &mut done.indexed,
                RecordOutcome::Deleted => &mut done.deleted,
                RecordOutcome::Superseded => &mut done.superseded,
                RecordOutcome::Quarantined(_) => &mut done.quarantined,
                RecordOutcome::Skipped => &mut done.skipped,
                RecordOutcome::Reported(_) => &mut done.failed,
            } += 1;
        }
        Ok(())
    }

    /// Documents by (index, id), in order, fetched in real time (`None`: not found).
    pub(super) async fn mget<'i>(
        &self,
        ids: impl Iterator<Item = (&'i str, &'i str)>,
    ) -> Result<Vec<Option<Box<RawValue>>>, VerifyError> {
        let docs: Vec<serde_json::Value> = ids
            .map(|(index, id)| serde_json::json!({"_index": index, "_id": id}))
            .collect();
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let n = docs.len();
        let body = self
            .search("/_mget", &serde_json::json!({ "docs": docs }))
            .await
            .map_err(|e| self.fail("_mget", e))?;
        #[derive(Deserialize)]
        struct Res {
            docs: Vec<Doc>,
        }
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            found: bool,
            #[serde(rename = "_source")]
            source: Option<Box<RawValue>>,
            #[serde(rename = "_index", default)]
            index: String,
            error: Option<serde_json::Value>,
        }
        let res: Res = serde_json::from_slice(&body).map_err(|e| self.fail("_mget", e))?;
        if res.docs.len() != n {
            return Err(self.fail(
                "_mget",
                format!("asked for {n} documents, got {} answers", res.docs.len()),
            ));
        }
        res.docs
            .into_iter()
            .map(|d| match d.error {
                Some(e) if e["type"] == "index_not_found_exception" => Ok(None),
                Some(e) => Err(self.fail(
                    &format!("_mget in {}", d.index),
                    e["type"].as_str().unwrap_or("error"),
                )),
                None => Ok(if d.found { d.source } else { None }),
            })
            .collect()
    }
}
