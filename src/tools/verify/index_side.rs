//! Index → table: each index walked (or sampled) by id, ids turned back into keys, items read
//! with BatchGetItem; documents with no item, or routed elsewhere, are extra; repair deletes
//! them at read-time versions.

use super::*;

/// Pages of ids from the index walk: the id, the full key of a hashed id, the version.
#[derive(Deserialize)]
pub(super) struct IdHit {
    #[serde(rename = "_id")]
    pub(super) id: String,
    #[serde(rename = "_version")]
    pub(super) version: Option<u64>,
    #[serde(rename = "_source")]
    pub(super) source: Option<RawKey>,
    #[serde(default)]
    pub(super) sort: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct RawKey {
    #[serde(rename = "dynamodb_raw_key")]
    pub(super) raw: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct IdPage {
    pub(super) pit_id: Option<String>,
    pub(super) hits: IdHits,
}

#[derive(Deserialize)]
pub(super) struct IdHits {
    pub(super) hits: Vec<IdHit>,
}

/// How long a point in time stays open between two pages of the walk.
pub(super) const PIT_KEEP_ALIVE: &str = "5m";

/// Where an item belongs.
pub(super) enum Home {
    Index(Arc<str>),
    /// Routed to no index.
    Nowhere,
    /// The function cannot index it as it is (the table side reports it).
    Unknown,
}

impl Verifier<'_> {
    pub(super) async fn index_side(&self) -> Result<(), VerifyError> {
        if !self.opts.extra {
            return Ok(());
        }
        for index in self.indexer.config.router.every_index(Some(self.table())) {
            if !self.refresh(&index).await? {
                continue;
            }
            match self.opts.sample {
                Some(fraction) => self.sample_index(&index, fraction).await?,
                None => self.walk_index(&index).await?,
            }
        }
        Ok(())
    }

    /// How many documents of `indexes` hold a value a numeric query on its field cannot find:
    /// under the schemaless template, a string or boolean in a field whose `.number` sub-field
    /// holds numbers in other documents (the document's `_ignored` names `<field>.number`).
    /// Fields that never hold a number are left out of the count: their values are strings,
    /// not drift. An index that does not exist has none.
    pub(super) async fn ignored(&self, indexes: &[Arc<str>]) -> Result<u64, VerifyError> {
        let mut total = 0;
        for index in indexes {
            let what = format!("count ignored values in {index}");
            let Some(mapping) = self.get_json(&format!("/{index}/_mapping"), &what).await? else {
                continue;
            };
            let mut fields = Vec::new();
            for m in mapping.as_object().into_iter().flat_map(|m| m.values()) {
                numeric_subfields(&m["mappings"]["properties"], "", &mut fields);
            }
            fields.sort();
            fields.dedup();
            if fields.is_empty() {
                continue;
            }
            // Which of them hold a number anywhere: one search, a filter per field.
            let aggs: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let filter = serde_json::json!({"filter": {"exists": {"field": f}}});
                    (i.to_string(), filter)
                })
                .collect();
            let q = serde_json::json!({"size": 0, "track_total_hits": false, "aggs": aggs});
            let found = self
                .post_json(&format!("/{index}/_search"), &q, &what)
                .await?;
            let mixed: Vec<&String> = fields
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    found["aggregations"][i.to_string()]["doc_count"].as_u64() > Some(0)
                })
                .map(|(_, f)| f)
                .collect();
            if mixed.is_empty() {
                continue;
            }
            let q = serde_json::json!({"query": {"terms": {"_ignored": mixed}}});
            let counted = self
                .post_json(&format!("/{index}/_count"), &q, &what)
                .await?;
            total += counted["count"]
                .as_u64()
                .ok_or_else(|| VerifyError(format!("{what}: the count has no number")))?;
        }
        Ok(total)
    }

    /// A JSON answer to GET `path`; `None` for 404.
    async fn get_json(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<serde_json::Value>, VerifyError> {
        match self
            .os()
            .request(Method::Get, path, None, self.opts.timeout)
            .await
        {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.fail(what, e)),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(self.fail(what, e)),
        }
    }

    /// A JSON answer to POST `path` with `body`.
    async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<serde_json::Value, VerifyError> {
        let answer = self
            .search(path, body)
            .await
            .map_err(|e| self.fail(what, e))?;
        serde_json::from_slice(&answer).map_err(|e| self.fail(what, e))
    }

    /// Makes every write so far visible to search; false if the index does not exist.
    pub(super) async fn refresh(&self, index: &str) -> Result<bool, VerifyError> {
        match self
            .os()
            .request(
                Method::Post,
                &format!("/{index}/_refresh"),
                None,
                self.opts.timeout,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status == Some(404) => Ok(false),
            Err(e) => Err(self.fail("refresh", e)),
        }
    }

    pub(super) async fn search(
        &self,
        path: &str,
        query: &serde_json::Value,
    ) -> Result<Vec<u8>, RequestError> {
        self.os()
            .request(
                Method::Post,
                path,
                Some(query.to_string().into_bytes()),
                self.opts.timeout,
            )
            .await
            .map(|(_, body)| body.to_vec())
    }

    /// Every document id of `index`, page by page under a point in time, so that the walk sees
    /// one state of the index however long it takes.
    pub(super) async fn walk_index(&self, index: &str) -> Result<(), VerifyError> {
        let t = self.opts.timeout;
        let opened = self
            .os()
            .request(
                Method::Post,
                &format!("/{index}/_search/point_in_time?keep_alive={PIT_KEEP_ALIVE}"),
                None,
                t,
            )
            .await
            .map_err(|e| self.fail("open a point in time", e))?;
        #[derive(Deserialize)]
        struct Pit {
            pit_id: String,
        }
        let mut pit = serde_json::from_slice::<Pit>(&opened.1)
            .map_err(|e| self.fail("point in time", e))?
            .pit_id;
        // `_shard_doc` is the cheap order for a walk; a cluster without it sorts by `_id`.
        let mut sort = serde_json::json!([{"_shard_doc": "asc"}]);
        let mut after: Option<serde_json::Value> = None;
        let result = loop {
            let mut q = serde_json::json!({
                "size": self.opts.page_size,
                "pit": {"id": pit, "keep_alive": PIT_KEEP_ALIVE},
                "sort": sort,
                "_source": [docid::RAW_KEY_FIELD],
                "version": true,
                "track_total_hits": false,
            });
            if let Some(a) = &after {
                q["search_after"] = a.clone();
            }
            let body = match self.search("/_search", &q).await {
                Ok(body) => body,
                Err(e)
                    if e.status == Some(400) && after.is_none() && sort[0].get("_id").is_none() =>
                {
                    sort = serde_json::json!([{"_id": "asc"}]);
                    continue;
                }
                Err(e) => break Err(self.fail(&format!("walk {index}"), e)),
            };
            let page: IdPage = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => break Err(self.fail(&format!("walk {index}"), e)),
            };
            if let Some(p) = page.pit_id {
                pit = p;
            }
            let Some(last) = page.hits.hits.last() else {
                break Ok(());
            };
            after = Some(serde_json::json!(last.sort));
            if let Err(e) = self.check_documents(index, page.hits.hits).await {
                break Err(e);
            }
        };
        // Closed now rather than when it expires; a failure here changes nothing found.
        let _ = self
            .os()
            .request(
                Method::Delete,
                "/_search/point_in_time",
                Some(
                    serde_json::json!({"pit_id": [pit]})
                        .to_string()
                        .into_bytes(),
                ),
                t,
            )
            .await;
        result
    }

    /// About `fraction` of `index`'s documents, chosen at random (at most 10,000, the most one
    /// search returns).
    pub(super) async fn sample_index(&self, index: &str, fraction: f64) -> Result<(), VerifyError> {
        let (_, body) = self
            .os()
            .request(
                Method::Get,
                &format!("/{index}/_count"),
                None,
                self.opts.timeout,
            )
            .await
            .map_err(|e| self.fail("count", e))?;
        let count = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0);
        let size = ((count as f64 * fraction).ceil() as u64).min(10_000);
        if size == 0 {
            return Ok(());
        }
        let q = serde_json::json!({
            "size": size,
            "query": {"function_score": {
                "query": {"match_all": {}},
                "random_score": {"seed": self.opts.seed, "field": "_seq_no"},
            }},
            "_source": [docid::RAW_KEY_FIELD],
            "version": true,
        });
        let body = self
            .search(&format!("/{index}/_search"), &q)
            .await
            .map_err(|e| self.fail(&format!("sample {index}"), e))?;
        let page: IdPage =
            serde_json::from_slice(&body).map_err(|e| self.fail(&format!("sample {index}"), e))?;
        let mut hits = page.hits.hits;
        while !hits.is_empty() {
            let rest = hits.split_off(hits.len().min(self.opts.page_size as usize));
            self.check_documents(index, hits).await?;
            hits = rest;
        }
        Ok(())
    }

    /// Index → table for one page of ids: each id's item is read (consistently) and planned;
    /// a document whose item is gone, or routed elsewhere, is extra once fetched again.
    pub(super) async fn check_documents(
        &self,
        index: &str,
        hits: Vec<IdHit>,
    ) -> Result<(), VerifyError> {
        let mut candidates = Vec::new();
        let mut lookups = Vec::new();
        let mut foreign = Vec::new();
        for (i, h) in hits.iter().enumerate() {
            let raw = h.source.as_ref().and_then(|s| s.raw.as_deref());
            match self.key_of_id(&h.id, raw) {
                Some(key) => lookups.push((i, key)),
                // No key of this table gives this id: another table's document (an index
                // shared), or one written by hand. Not this table's drift.
                None => foreign.push(i),
            }
        }
        let read_at = SystemTime::now();
        let items = self
            .batch_get(lookups.iter().map(|(_, k)| k.clone()).collect())
            .await?;
        let homes = self.homes(&items, read_at)?;
        for (i, _) in lookups {
            let at_home = match homes.iter().find(|(id, _)| *id == hits[i].id) {
                Some((_, Home::Index(h))) => &**h == index,
                Some((_, Home::Unknown)) => true,
                Some((_, Home::Nowhere)) | None => false,
            };
            if !at_home {
                candidates.push(i);
            }
        }
        // Fetched again: a document deleted since the walk saw it is not extra.
        let still = self
            .mget(candidates.iter().map(|&i| (index, hits[i].id.as_str())))
            .await?;
        let extra: Vec<usize> = candidates
            .into_iter()
            .zip(still)
            .filter_map(|(i, doc)| doc.map(|_| i))
            .collect();
        let mut deletable: Vec<&IdHit> = extra.iter().map(|&i| &hits[i]).collect();
        {
            let mut r = self.report.lock().expect("not poisoned");
            r.documents += hits.len() as u64;
            r.foreign += foreign.len() as u64;
            for &i in &extra {
                r.count(Drift::Extra, index, &hits[i].id, self.opts.examples);
            }
        }
        if self.opts.delete_foreign {
            deletable.extend(foreign.iter().map(|&i| &hits[i]));
        }
        self.progress
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        if self.opts.repair && !deletable.is_empty() {
            // Within the run's bound: past it, counted as withheld, never deleted.
            let n = deletable.len() as u64;
            let before = self.deletes_asked.fetch_add(n, Ordering::SeqCst);
            let allowed = self.opts.max_deletes.saturating_sub(before).min(n);
            if allowed < n {
                let mut r = self.report.lock().expect("not poisoned");
                r.repair.get_or_insert_default().withheld += n - allowed;
            }
            deletable.truncate(allowed as usize);
            if !deletable.is_empty() {
                self.delete_documents(index, &deletable, read_at).await;
            }
        }
        Ok(())
    }

    /// Where each item belongs, as the function would route it, by document id.
    pub(super) fn homes(
        &self,
        items: &[Item],
        read_at: SystemTime,
    ) -> Result<Vec<(String, Home)>, VerifyError> {
        let (payload, versions) = self.as_batch(items, read_at);
        let plan = self.plan(&payload, &versions)?;
        Ok(plan
            .records
            .iter()
            .enumerate()
            .map(|(pos, r)| match &r.disposition {
                Disposition::Change(i) | Disposition::Superseded(i) => {
                    let c = &plan.changes[*i];
                    (c.id.clone(), Home::Index(c.index.clone()))
                }
                Disposition::Skipped => (self.id_of(&items[pos]), Home::Nowhere),
                Disposition::Invalid(_) => (self.id_of(&items[pos]), Home::Unknown),
            })
            .collect())
    }

    /// Deletes extra documents with versions no later change can lose to: with stream-time
    /// versions, the read-time version of the lookup that found no item (a stream change after
    /// it wins); with a version attribute, one above the document's own.
    pub(super) async fn delete_documents(&self, index: &str, docs: &[&IdHit], read_at: SystemTime) {
        let attribute = self.indexer.config.version_attribute.as_deref();
        let (versions, _) = read_time::read_versions(read_at, self.opts.clock_skew, attribute);
        let index: Arc<str> = Arc::from(index);
        let changes: Vec<Change> = docs
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let version = match versions {
                    VersionSource::Fixed(v) => v,
                    _ => d.version.unwrap_or(0).saturating_add(1),
                };
                Change::delete(
                    index.clone(),
                    d.id.clone(),
                    version,
                    versions.version_type(),
                    k,
                )
            })
            .collect();
        let outcomes = self
            .indexer
            .apply(&changes, Instant::now() + self.opts.timeout)
            .await;
        let mut r = self.report.lock().expect("not poisoned");
        let done = r.repair.get_or_insert_default();
        for o in outcomes {
            *match o {
                ItemOutcome::Deleted | ItemOutcome::Indexed => &mut done.deleted,
                ItemOutcome::Superseded => &mut done.superseded,
                ItemOutcome::Skipped => &mut done.skipped,
                ItemOutcome::Retry(_) | ItemOutcome::Permanent(_) => &mut done.failed,
            } += 1;
        }
    }

    /// Items by key, read consistently; absent items are left out. An answer that does not
    /// match the request is an error ([`table::Reader`]): it must never read as "no item".
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, VerifyError> {
        let reader = table::Reader {
            ddb: self.ddb,
            table: self.table(),
            key_names: &self.key_names,
            units: self.units.as_ref(),
        };
        let found = reader
            .get(&keys)
            .await
            .map_err(|e| VerifyError(e.to_string()))?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// The `<path>.number` sub-fields (the schemaless template's numeric index of a field) under
/// `properties`, as full dotted names.
fn numeric_subfields(properties: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    for (name, field) in properties.as_object().into_iter().flatten() {
        let path = format!("{prefix}{name}");
        if field["fields"]["number"].is_object() {
            out.push(format!("{path}.number"));
        }
        numeric_subfields(&field["properties"], &format!("{path}."), out);
    }
}
