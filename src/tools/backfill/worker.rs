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
    },
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
            Step::Prepare { table, gc_deletes } => {
                let keys = crate::tools::verify::key_names(&self.ddb, &table).await?;
                let indexes = super::every_index(&self.indexer, &table);
                let gc = gc_deletes.unwrap_or_else(|| "12h".into());
                let previous = super::prepare_indexes(&self.indexer, &indexes, Some(&gc)).await?;
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
            Step::Finish { previous } => {
                super::restore_gc_deletes(&self.indexer, previous).await?;
                Ok(serde_json::json!({}))
            }
        };
        Ok(answer.expect("step outputs serialize"))
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
            matches!(finish, Step::Finish { previous } if previous == [("items".to_string(), None), ("b".to_string(), Some("1h".to_string()))])
        );
        assert!(serde_json::from_str::<Step>(r#"{"step":"unload"}"#).is_err());
    }
}
