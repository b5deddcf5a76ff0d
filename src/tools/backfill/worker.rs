//! The export load as steps a workflow engine runs one invocation at a time (the Step Functions
//! state machine in template.yaml, through the `export-loader` function): prepare the indexes
//! before the export is requested, open the finished export, load one data file per
//! invocation (a Distributed Map over `manifest-files.json`), and finish.
//!
//! The safety argument is `from_export`'s: `index.gc_deletes` is raised in `prepare`, before the
//! export exists, so every delete made after the export time is remembered until `finish`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::from_export::{self, Options};
use super::{BackfillError, Summary};
use crate::handler::Indexer;
use crate::sink::template::{self, Meta};
use crate::tools::export::{self, DataFile, Location, Share};

/// One invocation's input: `{"step": "prepare" | "open" | "load" | "finish", ...}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub enum Step {
    /// Creates the table's indexes and raises `index.gc_deletes`; answers [`Prepared`].
    #[serde(rename_all = "camelCase")]
    Prepare {
        table: String,
        /// Default: 12h.
        gc_deletes: Option<String>,
        /// The load's id (the state machine's execution): with it, each index is leased to
        /// this load until `finish` (see [`Lease`]).
        run: Option<String>,
    },
    /// Reads a finished export's summary manifest (DescribeExport's `ExportManifest`); answers
    /// [`Opened`].
    #[serde(rename_all = "camelCase")]
    Open { bucket: String, manifest: String },
    /// Loads one data file: `file` is one line of `manifest-files.json` as the Distributed
    /// Map's ItemReader hands it over; answers the file's [`Loaded`] counts, or fails (and the
    /// workflow retries the file) if any item is not accounted for.
    #[serde(rename_all = "camelCase")]
    Load {
        bucket: String,
        dir: String,
        file: ManifestLine,
        export_time: String,
        table: String,
        keys: Vec<String>,
    },
    /// Puts `index.gc_deletes` back as `prepare` found it.
    #[serde(rename_all = "camelCase")]
    Finish {
        previous: Vec<(String, Option<String>)>,
        /// The load's id given to `prepare`: only its own leases are ended, and only then is
        /// `index.gc_deletes` put back (from the lease).
        run: Option<String>,
    },
}

/// The key of a load's lease in an index's mapping `_meta`.
pub const LEASE_KEY: &str = "stream_indexer_load";

/// An index leased to one export load, from `prepare` to `finish`. Two loads of one index
/// overlapping would break the delete memory: the second `prepare` would find `gc_deletes`
/// already raised and keep that as the value to restore, and the first `finish` would lower it
/// while the second still loads. So a second load is refused while the lease is held, a
/// retried `prepare` of the same load keeps the value found first, and a `finish` puts back
/// only what its own lease recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run: String,
    /// When the lease was taken, epoch ms.
    pub since_ms: u64,
    /// `index.gc_deletes` as the load found it (`None`: the default).
    pub previous: Option<String>,
}

/// A line of `manifest-files.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLine {
    pub data_file_s3_key: String,
    pub item_count: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Prepared {
    pub table: String,
    pub keys: Vec<String>,
    pub previous: Vec<(String, Option<String>)>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Opened {
    pub bucket: String,
    pub dir: String,
    pub manifest_files_key: String,
    pub export_time: String,
    pub item_count: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Loaded {
    pub key: String,
    pub items: u64,
    pub indexed: u64,
    pub superseded: u64,
    pub skipped: u64,
    pub quarantined: u64,
}

/// What the steps share: clients built once per cold start.
pub struct Worker {
    pub indexer: Indexer,
    pub ddb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    /// How far DynamoDB's clock may be behind a stream change's timestamp.
    pub clock_skew: Duration,
    /// Time each page may take to land, retries included.
    pub page_timeout: Duration,
}

impl Worker {
    /// Runs one step; the answer is the step's output as JSON.
    pub async fn run(&self, step: Step) -> Result<serde_json::Value, BackfillError> {
        let answer = match step {
            Step::Prepare {
                table,
                gc_deletes,
                run,
            } => {
                let keys = crate::tools::table::key_names(&self.ddb, &table).await?;
                let indexes = super::every_index(&self.indexer, &table);
                let gc = gc_deletes.unwrap_or_else(|| "12h".into());
                let mut leased = Vec::new();
                if let Some(run) = &run {
                    for index in &indexes {
                        template::create_index(&self.indexer.opensearch, index).await?;
                        leased.push((index.clone(), self.take_lease(index, run).await?));
                    }
                }
                let found = super::prepare_indexes(&self.indexer, &indexes, Some(&gc)).await?;
                let previous = if run.is_some() { leased } else { found };
                serde_json::to_value(Prepared {
                    table,
                    keys,
                    previous,
                })
            }
            Step::Open { bucket, manifest } => {
                let dir = manifest
                    .rsplit_once('/')
                    .map(|(dir, _)| dir.to_string())
                    .ok_or_else(|| {
                        export::ExportError::NotALocation(format!("s3://{bucket}/{manifest}"))
                    })?;
                let location = Location { bucket, dir };
                let opened = export::open(&self.s3, &location).await?;
                let export_time = opened.export_time.ok_or_else(|| {
                    BackfillError::ExportData(format!(
                        "export {} has no exportTime in manifest-summary.json",
                        location.url()
                    ))
                })?;
                from_export::check_export_time(export_time, std::time::SystemTime::now())?;
                serde_json::to_value(Opened {
                    manifest_files_key: format!("{}/manifest-files.json", location.dir),
                    bucket: location.bucket,
                    dir: location.dir,
                    export_time: aws_sdk_dynamodb::primitives::DateTime::from(export_time)
                        .fmt(aws_sdk_dynamodb::primitives::DateTimeFormat::DateTime)
                        .expect("a time after 1970 formats"),
                    item_count: opened.item_count,
                })
            }
            Step::Load {
                bucket,
                dir,
                file,
                export_time,
                table,
                keys,
            } => {
                let location = Location { bucket, dir };
                let file = DataFile {
                    key: location
                        .data_key(&file.data_file_s3_key)
                        .map_err(BackfillError::ExportData)?,
                    item_count: file.item_count,
                    bytes: None,
                };
                let opts = Options {
                    table,
                    key_names: keys,
                    export_time: export::parse_time(&export_time)
                        .map_err(BackfillError::ExportData)?,
                    share: Share::ALL,
                    files_in_parallel: 1,
                    page_size: 1000,
                    clock_skew: self.clock_skew,
                    gc_deletes: None,
                    restore_gc_deletes: false,
                    allow_old_export: true,
                    checkpoint: None,
                    resume: false,
                    dry_run: false,
                    page_timeout: self.page_timeout,
                };
                let s: Summary =
                    from_export::load_file(&self.indexer, &self.s3, &location.bucket, &file, &opts)
                        .await?;
                if s.unaccounted() > 0 || s.failed > 0 {
                    return Err(BackfillError::ExportData(format!(
                        "s3://{}/{}: {} of {} item(s) not accounted for",
                        location.bucket,
                        file.key,
                        s.unaccounted().max(s.failed),
                        s.scanned
                    )));
                }
                serde_json::to_value(Loaded {
                    key: file.key,
                    items: s.scanned,
                    indexed: s.indexed,
                    superseded: s.superseded,
                    skipped: s.skipped,
                    quarantined: s.quarantined,
                })
            }
            Step::Finish {
                previous,
                run: None,
            } => {
                super::restore_gc_deletes(&self.indexer, previous).await?;
                Ok(serde_json::json!({}))
            }
            Step::Finish {
                previous,
                run: Some(run),
            } => {
                for (index, _) in previous {
                    self.end_lease(&index, &run).await?;
                }
                Ok(serde_json::json!({}))
            }
        };
        Ok(answer.expect("step outputs serialize"))
    }
}

impl Worker {
    fn lease_error(&self, index: &str, reason: String) -> BackfillError {
        BackfillError::LoadInProgress(format!("index {index}: {reason}"))
    }

    /// The leases of the indexes behind `index`, by concrete name, with each one's `_meta`.
    async fn leases(
        &self,
        index: &str,
    ) -> Result<Vec<(String, Meta, Option<Lease>)>, BackfillError> {
        let metas = template::mapping_meta(&self.indexer.opensearch, index)
            .await?
            .unwrap_or_default();
        metas
            .into_iter()
            .map(|(name, meta)| {
                let lease = match meta.get(LEASE_KEY) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(serde_json::from_value::<Lease>(v.clone()).map_err(|e| {
                        self.lease_error(&name, format!("unreadable _meta.{LEASE_KEY}: {e}"))
                    })?),
                };
                Ok((name, meta, lease))
            })
            .collect()
    }

    /// Takes `index` for load `run` (again, for a retried prepare); returns the
    /// `index.gc_deletes` found before the load. Refused while another load holds it.
    async fn take_lease(&self, index: &str, run: &str) -> Result<Option<String>, BackfillError> {
        let leases = self.leases(index).await?;
        if let Some((name, _, Some(held))) = leases.iter().find(|(_, _, l)| l.is_some()) {
            if held.run != run {
                return Err(self.lease_error(
                    name,
                    format!(
                        "another export load ({}) holds it since epoch ms {}; wait for it to finish, or, if it has ended without finishing, put index.gc_deletes back and remove _meta.{LEASE_KEY}",
                        held.run, held.since_ms
                    ),
                ));
            }
            return Ok(held.previous.clone());
        }
        let previous = crate::sink::gc_deletes::read(&self.indexer.opensearch, index)
            .await?
            .set;
        let lease = Lease {
            run: run.to_string(),
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            previous: previous.clone(),
        };
        for (name, mut meta, _) in leases {
            meta.insert(LEASE_KEY.into(), serde_json::json!(lease));
            template::put_mapping_meta(&self.indexer.opensearch, &name, &meta).await?;
        }
        // Two loads taking the lease at once: the later write stands, the other load stops.
        for (name, _, now) in self.leases(index).await? {
            if now.as_ref().map(|l| l.run.as_str()) != Some(run) {
                return Err(self.lease_error(
                    &name,
                    "another export load took it at the same moment".into(),
                ));
            }
        }
        Ok(previous)
    }

    /// Ends `run`'s lease on `index` and puts `index.gc_deletes` back as the lease found it. An
    /// index another load holds keeps its raised value (that load still needs it), and one no
    /// load holds is left as it is (a repeated finish).
    async fn end_lease(&self, index: &str, run: &str) -> Result<(), BackfillError> {
        for (name, mut meta, lease) in self.leases(index).await? {
            match lease {
                Some(l) if l.run == run => {
                    crate::sink::gc_deletes::set(
                        &self.indexer.opensearch,
                        &name,
                        l.previous.as_deref(),
                    )
                    .await?;
                    meta.remove(LEASE_KEY);
                    template::put_mapping_meta(&self.indexer.opensearch, &name, &meta).await?;
                }
                Some(other) => tracing::warn!(
                    index = %name,
                    holder = %other.run,
                    "another export load holds the index: its index.gc_deletes stays raised"
                ),
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_as_the_state_machine_sends_them() {
        let load: Step = serde_json::from_str(
            r#"{"step":"load","bucket":"b","dir":"p/AWSDynamoDB/1-a","file":{"itemCount":8,"md5Checksum":"x","etag":"y","dataFileS3Key":"p/AWSDynamoDB/1-a/data/f.json.gz"},"exportTime":"2020-11-04T07:28:34.028Z","table":"T","keys":["pk","sk"]}"#,
        )
        .unwrap();
        match load {
            Step::Load { file, keys, .. } => {
                assert_eq!(file.data_file_s3_key, "p/AWSDynamoDB/1-a/data/f.json.gz");
                assert_eq!(file.item_count, Some(8));
                assert_eq!(keys, ["pk", "sk"]);
            }
            other => panic!("{other:?}"),
        }
        let finish: Step =
            serde_json::from_str(r#"{"step":"finish","previous":[["items",null],["b","1h"]]}"#)
                .unwrap();
        assert!(
            matches!(finish, Step::Finish { previous, run: None } if previous == [("items".to_string(), None), ("b".to_string(), Some("1h".to_string()))])
        );
        assert!(serde_json::from_str::<Step>(r#"{"step":"unload"}"#).is_err());
    }
}
