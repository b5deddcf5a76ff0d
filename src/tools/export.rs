//! DynamoDB exports to S3 (`ExportTableToPointInTime`, `DYNAMODB_JSON`): where an export is, what
//! its manifests say, its data files as streams of lines, and requesting a new one.
//!
//! Layout of an export (AWS, "DynamoDB table export output format"):
//! `<prefix>/AWSDynamoDB/<export-id>/manifest-summary.json` (export time, item count, format),
//! `manifest-files.json` (one JSON object per data file: `dataFileS3Key`, `itemCount`), and
//! `data/<name>.json.gz`: gzip, one `{"Item":{…}}` per line. Some writers (moto, copies made by
//! hand) leave no manifests; then the data files are found by listing `data/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_sdk_dynamodb::types::{ExportFormat, ExportStatus};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};

/// How long to wait between DescribeExport calls while an export runs.
const EXPORT_POLL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{0} is not an S3 export location: expected s3://bucket/prefix/AWSDynamoDB/<export-id>/"
    )]
    NotALocation(String),
    #[error("S3 {0}")]
    S3(String),
    #[error("DynamoDB {0}")]
    Dynamo(String),
    #[error("{key}: {reason}")]
    Manifest { key: String, reason: String },
    #[error(
        "export {location} is in {format} format; only DYNAMODB_JSON can be loaded (export again with --export-format DYNAMODB_JSON)"
    )]
    Format { location: String, format: String },
    #[error("export {0} has no data files (no manifest-files.json and nothing under data/)")]
    NoData(String),
    #[error("export {arn} {status}: {reason}")]
    Failed {
        arn: String,
        status: String,
        reason: String,
    },
}

/// Where an export's files are: `s3://bucket/<prefix>/AWSDynamoDB/<export-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// The export's directory, without a trailing slash.
    pub dir: String,
}

impl Location {
    /// Parses `s3://bucket/dir/` (the trailing slash is optional).
    pub fn parse(url: &str) -> Result<Location, ExportError> {
        let bad = || ExportError::NotALocation(url.to_string());
        let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, dir) = rest.split_once('/').ok_or_else(bad)?;
        let dir = dir.trim_end_matches('/');
        if bucket.is_empty() || dir.is_empty() {
            return Err(bad());
        }
        Ok(Location {
            bucket: bucket.to_string(),
            dir: dir.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("s3://{}/{}/", self.bucket, self.dir)
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    /// A key from a manifest as an object key: AWS writes full keys, but a manifest whose keys
    /// start at `AWSDynamoDB/` (the export's prefix left out) is read as relative to it.
    pub fn resolve(&self, key: &str) -> String {
        let export_prefix = self
            .dir
            .rfind("AWSDynamoDB/")
            .map(|at| &self.dir[..at])
            .unwrap_or("");
        if !export_prefix.is_empty()
            && key.starts_with("AWSDynamoDB/")
            && !key.starts_with(export_prefix)
        {
            format!("{export_prefix}{key}")
        } else {
            key.to_string()
        }
    }
}

impl Location {
    /// A data file's key from a manifest (or a loader's payload), [resolved](Location::resolve)
    /// and confined to this export's `data/` directory: a manifest must not send the loader to
    /// another export, another table's data or anything else the role may read.
    pub fn data_key(&self, key: &str) -> Result<String, String> {
        let resolved = self.resolve(key);
        let inside = resolved
            .strip_prefix(&self.dir)
            .and_then(|rest| rest.strip_prefix("/data/"))
            .is_some_and(|name| {
                !name.is_empty() && !name.split('/').any(|s| s == ".." || s.is_empty())
            });
        if inside {
            Ok(resolved)
        } else {
            Err(format!(
                "data file key {key:?} is not in the export's data directory {}/data/",
                self.dir
            ))
        }
    }
}

/// One data file of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub key: String,
    /// Items in the file, from `manifest-files.json`; checked once the file is read.
    pub item_count: Option<u64>,
    /// Compressed size, from listing `data/`.
    pub bytes: Option<u64>,
}

/// What an export holds, from its manifests or, without them, a listing.
#[derive(Debug, Clone)]
pub struct Export {
    pub location: Location,
    /// The point in time the export reflects (`exportTime`).
    pub export_time: Option<SystemTime>,
    pub item_count: Option<u64>,
    /// `tableArn` from the summary: the table's name for `{table}` and its key schema.
    pub table_arn: Option<String>,
    /// Sorted by key, so that `--files i/N` means the same files on every machine.
    pub files: Vec<DataFile>,
}

impl Export {
    pub fn bytes(&self) -> u64 {
        self.files.iter().filter_map(|f| f.bytes).sum()
    }

    pub fn table_name(&self) -> Option<&str> {
        table_name(self.table_arn.as_deref()?)
    }
}

/// The table name in a table ARN (`arn:aws:dynamodb:<region>:<account>:table/<name>`, possibly
/// followed by `/export/...` or `/stream/...`).
pub fn table_name(arn: &str) -> Option<&str> {
    let after = arn.rsplit_once(":table/")?.1;
    Some(after.split('/').next().unwrap_or(after)).filter(|n| !n.is_empty())
}

/// `manifest-summary.json`, the fields we read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub export_time: Option<String>,
    pub item_count: Option<u64>,
    pub output_format: Option<String>,
    pub manifest_files_s3_key: Option<String>,
    pub table_arn: Option<String>,
}

/// One line of `manifest-files.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFile {
    data_file_s3_key: String,
    item_count: Option<u64>,
}

pub fn parse_summary(text: &str) -> Result<Summary, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// `2020-11-04T07:28:34.028Z` as a time.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let t = DateTime::from_str(text, DateTimeFormat::DateTime)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    SystemTime::try_from(t).map_err(|e| format!("{text:?}: {e}"))
}

/// `manifest-files.json`: one JSON object per line; blank lines are allowed.
pub fn parse_manifest_files(text: &str, location: &Location) -> Result<Vec<DataFile>, String> {
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: ManifestFile =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        files.push(DataFile {
            key: location
                .data_key(&f.data_file_s3_key)
                .map_err(|e| format!("line {}: {e}", n + 1))?,
            item_count: f.item_count,
            bytes: None,
        });
    }
    Ok(files)
}

/// The item in an export line `{"Item":{…}}`, as the JSON text it is (DynamoDB JSON, exactly the
/// shape of a stream record's `NewImage`).
pub fn parse_line(line: &str) -> Result<&RawValue, String> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "Item", borrow)]
        item: Option<&'a RawValue>,
    }
    let parsed: Line<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let item = parsed
        .item
        .ok_or_else(|| "the line has no \"Item\"".to_string())?;
    if !item.get().starts_with('{') {
        return Err("\"Item\" is not an object".to_string());
    }
    Ok(item)
}

/// Which share of the data files one machine loads: `i/N` (1 ≤ i ≤ N) takes every N-th file of
/// the sorted list, starting with the i-th.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub part: u32,
    pub of: u32,
}

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(s: &str) -> Result<Share, String> {
        let bad = || format!("{s:?} is not i/N with 1 ≤ i ≤ N (for example 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (part, of) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if part == 0 || of == 0 || part > of {
            return Err(bad());
        }
        Ok(Share { part, of })
    }
}

impl Share {
    pub const ALL: Share = Share { part: 1, of: 1 };

    pub fn select(&self, files: &[DataFile]) -> Vec<DataFile> {
        files
            .iter()
            .enumerate()
            .filter(|(n, _)| (*n as u32) % self.of == self.part - 1)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// Reads an export's description: the manifests if it has them, otherwise a listing of `data/`.
/// Data files' sizes come from the listing either way (the manifests carry none).
pub async fn open(s3: &aws_sdk_s3::Client, location: &Location) -> Result<Export, ExportError> {
    let summary_key = location.key("manifest-summary.json");
    let listed = list(s3, &location.bucket, &location.key("data/")).await?;
    let mut export = Export {
        location: location.clone(),
        export_time: None,
        item_count: None,
        table_arn: None,
        files: Vec::new(),
    };
    match get_text(s3, &location.bucket, &summary_key).await? {
        Some(text) => {
            let manifest = |reason: String| ExportError::Manifest {
                key: summary_key.clone(),
                reason,
            };
            let summary = parse_summary(&text).map_err(manifest)?;
            if let Some(format) = summary.output_format.as_deref()
                && format != "DYNAMODB_JSON"
            {
                return Err(ExportError::Format {
                    location: location.url(),
                    format: format.to_string(),
                });
            }
            export.export_time = summary
                .export_time
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(manifest)?;
            export.item_count = summary.item_count;
            export.table_arn = summary.table_arn;
            let files_key = summary
                .manifest_files_s3_key
                .map(|k| location.resolve(&k))
                .unwrap_or_else(|| location.key("manifest-files.json"));
            let text = get_text(s3, &location.bucket, &files_key)
                .await?
                .ok_or_else(|| ExportError::Manifest {
                    key: files_key.clone(),
                    reason: "named by the summary but not found".into(),
                })?;
            export.files =
                parse_manifest_files(&text, location).map_err(|reason| ExportError::Manifest {
                    key: files_key.clone(),
                    reason,
                })?;
            let sizes: std::collections::HashMap<&str, u64> =
                listed.iter().map(|(k, b)| (k.as_str(), *b)).collect();
            for f in &mut export.files {
                f.bytes = sizes.get(f.key.as_str()).copied();
            }
        }
        None => {
            export.files = listed
                .into_iter()
                .filter(|(k, _)| k.ends_with(".gz"))
                .map(|(key, bytes)| DataFile {
                    key,
                    item_count: None,
                    bytes: Some(bytes),
                })
                .collect();
        }
    }
    if export.files.is_empty() {
        return Err(ExportError::NoData(location.url()));
    }
    export.files.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(export)
}

/// Every object under `prefix`: (key, size).
async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>, ExportError> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            ExportError::S3(format!(
                "ListObjectsV2 s3://{bucket}/{prefix}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?;
        for o in page.contents.unwrap_or_default() {
            if let Some(key) = o.key {
                out.push((key, o.size.unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(out)
}

/// A small object's text; `None` if there is no such key.
async fn get_text(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<String>, ExportError> {
    let fail = |e: String| ExportError::S3(format!("GetObject s3://{bucket}/{key}: {e}"));
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
        Err(e) => return Err(fail(crate::telemetry::error_chain(&e))),
    };
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| fail(crate::telemetry::error_chain(&e)))?
        .into_bytes();
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| fail("not UTF-8 text".into()))
}

/// A data file's lines, streamed: gunzipped as it downloads, never whole in memory. `read`
/// counts the compressed bytes as they arrive (for progress against the listed sizes).
pub async fn open_file(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    read: Arc<AtomicU64>,
) -> Result<Box<dyn AsyncBufRead + Send + Unpin>, ExportError> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            ExportError::S3(format!(
                "GetObject s3://{bucket}/{key}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?;
    // AWS writes an empty file for an empty partition; zero bytes are no gzip stream at all.
    if out.content_length == Some(0) {
        return Ok(Box::new(tokio::io::empty()));
    }
    let compressed = BufReader::new(Counted {
        inner: out.body.into_async_read(),
        read,
    });
    let mut gunzip = async_compression::tokio::bufread::GzipDecoder::new(compressed);
    // Gzip files may hold several members one after another; all are data.
    gunzip.multiple_members(true);
    Ok(Box::new(BufReader::with_capacity(256 * 1024, gunzip)))
}

/// An `AsyncRead` that adds the bytes it reads to a counter.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

/// An export this program asked for.
#[derive(Debug, Clone)]
pub struct Requested {
    pub arn: String,
    /// Taken just before the request: the export reflects the table at a point after it.
    pub requested_at: SystemTime,
}

/// Starts `ExportTableToPointInTime` of `table` into `s3://bucket/prefix`. The table needs
/// point-in-time recovery; without it the error says so.
pub async fn request(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    bucket: &str,
    prefix: Option<&str>,
) -> Result<Requested, ExportError> {
    let described = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            ExportError::Dynamo(format!(
                "DescribeTable {table}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?;
    let arn = described
        .table
        .and_then(|t| t.table_arn)
        .ok_or_else(|| ExportError::Dynamo(format!("DescribeTable {table}: no table ARN")))?;
    let requested_at = SystemTime::now();
    let out = ddb
        .export_table_to_point_in_time()
        .table_arn(&arn)
        .s3_bucket(bucket)
        .set_s3_prefix(prefix.map(str::to_string))
        .export_format(ExportFormat::DynamodbJson)
        .send()
        .await
        .map_err(|e| {
            let text = crate::telemetry::error_chain(&e);
            if e.as_service_error()
                .is_some_and(|s| s.is_point_in_time_recovery_unavailable_exception())
            {
                ExportError::Dynamo(format!(
                    "table {table} cannot be exported: point-in-time recovery is off (turn it on: aws dynamodb update-continuous-backups --table-name {table} --point-in-time-recovery-specification PointInTimeRecoveryEnabled=true): {text}"
                ))
            } else {
                ExportError::Dynamo(format!("ExportTableToPointInTime {table}: {text}"))
            }
        })?;
    let arn = out
        .export_description
        .and_then(|d| d.export_arn)
        .ok_or_else(|| ExportError::Dynamo("ExportTableToPointInTime: no export ARN".into()))?;
    Ok(Requested { arn, requested_at })
}

/// A finished export, from DescribeExport.
#[derive(Debug, Clone)]
pub struct Finished {
    pub export_time: Option<SystemTime>,
    /// Key of `manifest-summary.json`, when the service names it.
    pub manifest: Option<String>,
    pub item_count: Option<u64>,
}

/// Waits until the export completes; `status` is called after every poll with the status.
pub async fn wait(
    ddb: &aws_sdk_dynamodb::Client,
    arn: &str,
    mut status: impl FnMut(&str),
) -> Result<Finished, ExportError> {
    loop {
        let d = ddb
            .describe_export()
            .export_arn(arn)
            .send()
            .await
            .map_err(|e| {
                ExportError::Dynamo(format!(
                    "DescribeExport {arn}: {}",
                    crate::telemetry::error_chain(&e)
                ))
            })?
            .export_description
            .ok_or_else(|| ExportError::Dynamo(format!("DescribeExport {arn}: no description")))?;
        let state = d.export_status.clone();
        status(state.as_ref().map(|s| s.as_str()).unwrap_or("UNKNOWN"));
        match state {
            Some(ExportStatus::Completed) => {
                return Ok(Finished {
                    export_time: d.export_time.and_then(|t| SystemTime::try_from(t).ok()),
                    manifest: d.export_manifest,
                    item_count: d.item_count.map(|n| n.max(0) as u64),
                });
            }
            Some(ExportStatus::Failed) => {
                return Err(ExportError::Failed {
                    arn: arn.to_string(),
                    status: "FAILED".into(),
                    reason: format!(
                        "{} {}",
                        d.failure_code.unwrap_or_default(),
                        d.failure_message.unwrap_or_default()
                    ),
                });
            }
            _ => tokio::time::sleep(EXPORT_POLL).await,
        }
    }
}

/// The export directories under `<prefix>/AWSDynamoDB/`.
pub async fn export_dirs(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: Option<&str>,
) -> Result<Vec<String>, ExportError> {
    let base = match prefix.map(|p| p.trim_end_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/AWSDynamoDB/"),
        _ => "AWSDynamoDB/".to_string(),
    };
    let mut dirs: Vec<String> = list(s3, bucket, &base)
        .await?
        .into_iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix(&base)?;
            let id = rest.split('/').next()?;
            (!id.is_empty()).then(|| format!("{base}{id}"))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// Where a finished export's files are: the directory of the manifest the service names, else
/// the one named by the export id (the ARN's last part), else the one directory that was not
/// there before the request (`before`, from [`export_dirs`]; local servers name directories
/// their own way).
pub async fn locate(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: Option<&str>,
    requested: &Requested,
    finished: &Finished,
    before: &[String],
) -> Result<Location, ExportError> {
    if let Some(manifest) = &finished.manifest
        && let Some((dir, _)) = manifest.rsplit_once('/')
    {
        return Ok(Location {
            bucket: bucket.to_string(),
            dir: dir.to_string(),
        });
    }
    let now = export_dirs(s3, bucket, prefix).await?;
    let id = requested.arn.rsplit('/').next().unwrap_or_default();
    if let Some(dir) = now.iter().find(|d| d.ends_with(&format!("/{id}"))) {
        return Ok(Location {
            bucket: bucket.to_string(),
            dir: dir.clone(),
        });
    }
    let new: Vec<&String> = now.iter().filter(|d| !before.contains(d)).collect();
    match new.as_slice() {
        [one] => Ok(Location {
            bucket: bucket.to_string(),
            dir: (*one).clone(),
        }),
        _ => Err(ExportError::S3(format!(
            "export {} finished but its files were not found under s3://{bucket}/{} ({} new export directories)",
            requested.arn,
            prefix.unwrap_or(""),
            new.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> Location {
        Location::parse("s3://exports/2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/").unwrap()
    }

    #[test]
    fn a_location_is_a_bucket_and_a_directory() {
        let l = location();
        assert_eq!(l.bucket, "exports");
        assert_eq!(l.dir, "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4");
        assert_eq!(
            Location::parse("s3://b/AWSDynamoDB/x").unwrap().dir,
            "AWSDynamoDB/x"
        );
        for bad in [
            "exports/x",
            "s3://bucket",
            "s3://bucket/",
            "s3:///dir",
            "http://b/x",
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_summary_manifest_as_aws_writes_it() {
        let text = r#"{"version":"2020-06-30","exportArn":"arn:aws:dynamodb:us-east-1:123456789012:table/ProductCatalog/export/01234567890123-a1b2c3d4","startTime":"2020-11-04T07:28:34.028Z","endTime":"2020-11-04T07:33:43.897Z","tableArn":"arn:aws:dynamodb:us-east-1:123456789012:table/ProductCatalog","tableId":"12345a12-abcd-123a-ab12-1234abc12345","exportTime":"2020-11-04T07:28:34.028Z","s3Bucket":"ddb-productcatalog-export","s3Prefix":"2020-Nov","s3SseAlgorithm":"AES256","s3SseKmsKeyId":null,"manifestFilesS3Key":"2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/manifest-files.json","billedSizeBytes":0,"itemCount":8,"outputFormat":"DYNAMODB_JSON","exportType":"FULL_EXPORT"}"#;
        let s = parse_summary(text).unwrap();
        assert_eq!(s.item_count, Some(8));
        assert_eq!(s.output_format.as_deref(), Some("DYNAMODB_JSON"));
        let t = parse_time(s.export_time.as_deref().unwrap()).unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_604_474_914_028
        );
        assert_eq!(table_name(&s.table_arn.unwrap()), Some("ProductCatalog"));
        assert_eq!(
            table_name("arn:aws:dynamodb:us-east-1:1:table/T/export/0-a"),
            Some("T")
        );
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn data_file_keys_are_full_keys_or_relative_to_the_export_prefix() {
        let l = location();
        let text = concat!(
            r#"{"itemCount":8,"md5Checksum":"sQMSpEILNgoQmarvDFonGQ==","etag":"af83d6f217c19b8b0fff8023d8ca4716-1","dataFileS3Key":"2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/data/asdl123dasas.json.gz"}"#,
            "\n",
            r#"{"itemCount":0,"md5Checksum":"x","etag":"y","dataFileS3Key":"AWSDynamoDB/01234567890123-a1b2c3d4/data/empty.json.gz"}"#,
            "\n\n"
        );
        let files = parse_manifest_files(text, &l).unwrap();
        assert_eq!(
            files,
            vec![
                DataFile {
                    key: "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/data/asdl123dasas.json.gz"
                        .into(),
                    item_count: Some(8),
                    bytes: None
                },
                DataFile {
                    key: "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/data/empty.json.gz".into(),
                    item_count: Some(0),
                    bytes: None
                },
            ]
        );
        let e = parse_manifest_files("{\"itemCount\":1}\n", &l).unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        // Keys outside the export's data directory are refused, naming the line.
        for key in [
            "2020-Nov/AWSDynamoDB/01234567890123-zzzzzzzz/data/other.json.gz",
            "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/manifest-summary.json",
            "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/data/../../x/data/f.json.gz",
            "2020-Nov/AWSDynamoDB/01234567890123-a1b2c3d4/data/",
            "secrets/key.json.gz",
        ] {
            let line = format!("{{\"itemCount\":1,\"dataFileS3Key\":{key:?}}}\n");
            let e = parse_manifest_files(&format!("\n{line}"), &l).unwrap_err();
            assert!(
                e.starts_with("line 2:") && e.contains("data directory"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_export_line_gives_its_item_text() {
        let item = parse_line(r#"{"Item": {"pk": {"S": "k0"}, "n": {"N": "1.50"}}}"#).unwrap();
        assert_eq!(item.get(), r#"{"pk": {"S": "k0"}, "n": {"N": "1.50"}}"#);
        assert!(
            parse_line(r#"{"item":{}}"#)
                .unwrap_err()
                .contains("no \"Item\"")
        );
        assert!(
            parse_line(r#"{"Item":[1]}"#)
                .unwrap_err()
                .contains("not an object")
        );
        assert!(parse_line(r#"{"Item":{"pk":"#).is_err());
    }

    #[test]
    fn shares_split_the_files_without_overlap() {
        let files: Vec<DataFile> = (0..7)
            .map(|n| DataFile {
                key: format!("d/{n}.json.gz"),
                item_count: None,
                bytes: None,
            })
            .collect();
        let shares: Vec<Share> = ["1/3", "2/3", "3/3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut all: Vec<String> = shares
            .iter()
            .flat_map(|s| s.select(&files))
            .map(|f| f.key)
            .collect();
        assert_eq!(shares[0].select(&files).len(), 3);
        all.sort();
        let mut expected: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(Share::ALL.select(&files).len(), 7);
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
    }
}
