//! The Prometheus endpoint's body: every metric, read from the hub, the engine and the log at
//! scrape time and encoded with `prometheus-client` in the OpenMetrics text format.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::DropReason;
use crate::hub::Hub;

/// Content type of the OpenMetrics output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes every metric of the broker: OpenMetrics when the scraper asks for it (Prometheus
/// does), else the classic Prometheus text format (curl, `promtool check metrics`).
pub fn render(hub: &Arc<Hub>, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("axle");
    registry.register_collector(Box::new(HubCollector(hub.clone())));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(if openmetrics { out } else { to_prometheus_text(&out) })
}

/// OpenMetrics → Prometheus text 0.0.4, for the output `prometheus-client` writes: a counter
/// family's HELP and TYPE lines take the `_total` name its samples carry, and the `# UNIT`
/// and `# EOF` lines (unknown to 0.0.4) go. Samples are the same in both formats.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let h = help.take();
            if kind == "counter" && !name.ends_with("_total") {
                if let Some(h) = h {
                    let text = h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')).map_or("", |(_, t)| t);
                    out.push_str(&format!("# HELP {name}_total {text}\n"));
                }
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                if let Some(h) = h {
                    out.push_str(h);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

struct HubCollector(Arc<Hub>);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

/// Label values are escaped here: prometheus-client 0.24 writes them as given, and some come
/// from clients (client ids, consumer-group names).
type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// A label value with `\`, `"` and newlines escaped as the text formats require.
fn esc(v: &str) -> Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(v)
    }
}

/// One counter family: `(labels, value)` samples.
fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    if let [(labels, v)] = samples {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One gauge family: `(labels, value)` samples.
fn gauges(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(Labels<'_>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    if let [(labels, v)] = samples {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_f64(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(Labels<'_>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    if let [(labels, v)] = samples {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for HubCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let hub = &self.0;
        let m = &hub.metrics;
        let engine = &hub.engine;

        // A gauge of 1 rather than OpenMetrics' `info` type, which the Prometheus text
        // format (and `promtool check metrics`) does not know.
        gauges(
            &mut enc,
            "build_info",
            "Version and node name of this broker (always 1).",
            None,
            &[(vec![("version", esc(env!("CARGO_PKG_VERSION"))), ("node", esc(hub.config.node_id.as_str()))], 1)],
        )?;
        gauges(
            &mut enc,
            "uptime",
            "Time since start-up.",
            Some(&Unit::Seconds),
            &[(vec![], clamp(m.started.elapsed().as_secs()))],
        )?;

        // Connections and sessions.
        let listeners = m.listeners();
        let open: Vec<(Labels<'_>, i64)> =
            listeners.iter().map(|(n, s)| (vec![("listener", esc(n))], clamp(s.open.load(Relaxed)))).collect();
        gauges(&mut enc, "connections", "Open MQTT connections, per listener.", None, &open)?;
        let accepted: Vec<(Labels<'_>, u64)> =
            listeners.iter().map(|(n, s)| (vec![("listener", esc(n))], s.accepted.load(Relaxed))).collect();
        counters(&mut enc, "connections_accepted", "MQTT connections accepted, per listener.", None, &accepted)?;
        let online = hub.online.lock().len();
        gauges(
            &mut enc,
            "sessions",
            "Sessions: connected (online), and persistent sessions kept while their client is away (offline).",
            None,
            &[
                (vec![("state", esc("online"))], clamp(online as u64)),
                (vec![("state", esc("offline"))], clamp(m.stored_sessions.load(Relaxed))),
            ],
        )?;
        gauges(
            &mut enc,
            "subscriptions",
            "Subscriptions of connected sessions (shared ones included).",
            None,
            &[(vec![], clamp(hub.tree.read().len() as u64))],
        )?;
        gauges(
            &mut enc,
            "retained_messages",
            "Retained messages held.",
            None,
            &[(vec![], clamp(hub.retained.read().len() as u64))],
        )?;

        // Messages.
        let qos = ["0", "1", "2"];
        let rx: Vec<(Labels<'_>, u64)> =
            (0..3).map(|q| (vec![("qos", esc(qos[q]))], m.received[q].load(Relaxed))).collect();
        counters(&mut enc, "messages_received", "PUBLISH packets received from clients, by QoS.", None, &rx)?;
        let tx: Vec<(Labels<'_>, u64)> =
            (0..3).map(|q| (vec![("qos", esc(qos[q]))], m.sent[q].load(Relaxed))).collect();
        counters(
            &mut enc,
            "messages_sent",
            "PUBLISH packets sent to clients, by QoS (redeliveries included).",
            None,
            &tx,
        )?;
        counters(
            &mut enc,
            "received_payload",
            "Payload bytes received in PUBLISH packets.",
            Some(&Unit::Bytes),
            &[(vec![], m.received_bytes.load(Relaxed))],
        )?;
        counters(
            &mut enc,
            "sent_payload",
            "Payload bytes sent in PUBLISH packets.",
            Some(&Unit::Bytes),
            &[(vec![], m.sent_bytes.load(Relaxed))],
        )?;
        let dropped: Vec<(Labels<'_>, u64)> =
            DropReason::ALL.iter().map(|r| (vec![("reason", esc(r.label()))], m.dropped_count(*r))).collect();
        counters(&mut enc, "messages_dropped", "Messages not stored or not delivered, by reason.", None, &dropped)?;
        let t_in: Vec<(Labels<'_>, u64)> =
            m.topics.iter().map(|t| (vec![("filter", esc(t.filter.as_str()))], t.messages_in.load(Relaxed))).collect();
        counters(
            &mut enc,
            "topic_messages_received",
            "Messages received on topics matching a monitored filter (metrics.topics).",
            None,
            &t_in,
        )?;
        let t_out: Vec<(Labels<'_>, u64)> =
            m.topics.iter().map(|t| (vec![("filter", esc(t.filter.as_str()))], t.messages_out.load(Relaxed))).collect();
        counters(
            &mut enc,
            "topic_messages_sent",
            "Messages sent on topics matching a monitored filter (metrics.topics).",
            None,
            &t_out,
        )?;
        let slow = super::slow_subscribers(hub, hub.config.metrics.slow_subscribers);
        let slow_samples: Vec<(Labels<'_>, f64)> = slow
            .iter()
            .map(|s| (vec![("client_id", esc(s.client_id.as_str()))], s.latency_ema_micros as f64 / 1e6))
            .collect();
        gauge_f64(
            &mut enc,
            "slow_subscriber_latency",
            "Moving average of delivery latency of the slowest connected subscribers (top metrics.slow_subscribers).",
            Some(&Unit::Seconds),
            &slow_samples,
        )?;

        // Streams and the log.
        let streams = engine.streams().streams();
        let parts = engine.partitions();
        let mut appended = vec![0u64; streams.len()];
        let mut size = Vec::with_capacity(parts.len());
        let mut segments = Vec::with_capacity(parts.len());
        let mut ends = Vec::with_capacity(parts.len());
        let mut starts = Vec::with_capacity(parts.len());
        for p in parts {
            let b = p.log.bounds();
            appended[p.stream] += b.end;
            let labels = vec![("stream", esc(streams[p.stream].name.as_str())), ("partition", esc(p.name.as_str()))];
            size.push((labels.clone(), clamp(p.log.size_bytes())));
            segments.push((labels.clone(), clamp(p.log.segment_count() as u64)));
            ends.push((labels.clone(), clamp(b.end)));
            starts.push((labels, clamp(b.log_start)));
        }
        let appended: Vec<(Labels<'_>, u64)> =
            streams.iter().zip(&appended).map(|(s, n)| (vec![("stream", esc(s.name.as_str()))], *n)).collect();
        counters(&mut enc, "stream_appended_records", "Records appended to each stream's log (the sum of its partitions' end offsets); rate() is the append rate.", None, &appended)?;
        gauges(&mut enc, "partition_log_size", "Bytes of segment files per partition.", Some(&Unit::Bytes), &size)?;
        gauges(&mut enc, "partition_segments", "Segment files per partition.", None, &segments)?;
        gauges(&mut enc, "partition_end_offset", "Offset the next record of the partition will get.", None, &ends)?;
        gauges(
            &mut enc,
            "partition_start_offset",
            "First offset still in the partition (retention moves it).",
            None,
            &starts,
        )?;
        let stats = engine.log().stats();
        counters(
            &mut enc,
            "log_written",
            "Bytes written to segment files.",
            Some(&Unit::Bytes),
            &[(vec![], stats.bytes.load(Relaxed))],
        )?;
        counters(
            &mut enc,
            "log_fsyncs",
            "fdatasync calls issued by the log.",
            None,
            &[(vec![], stats.fsyncs.load(Relaxed))],
        )?;
        let h = stats.sync_latency.snapshot();
        // The encoder wants per-bucket counts (it accumulates) and f64::MAX for +Inf.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(h.cumulative.len() + 1);
        for (bound, cumulative) in &h.cumulative {
            buckets.push((*bound as f64 / 1e6, cumulative - below));
            below = *cumulative;
        }
        buckets.push((f64::MAX, h.count - below));
        enc.encode_descriptor(
            "log_fsync_duration",
            "Duration of one sync round of the log (the parallel fdatasync of every file it covers).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(h.sum_micros as f64 / 1e6, h.count, &buckets, None)?;

        // Consumer groups.
        let mut lag: Vec<(String, String, String, i64)> = Vec::new();
        if let Ok(groups) = engine.groups().describe_all() {
            for g in groups {
                let Some(stream) = g.stream.as_deref() else { continue };
                let Some(si) = streams.iter().position(|s| s.name == stream) else { continue };
                for (n, p) in parts.iter().filter(|p| p.stream == si).enumerate() {
                    let b = p.log.bounds();
                    let from = g
                        .committed
                        .iter()
                        .find(|(q, _)| *q as usize == n)
                        .map_or(b.log_start, |(_, o)| (*o).max(b.log_start));
                    lag.push((g.name.clone(), stream.to_string(), p.name.clone(), clamp(b.end.saturating_sub(from))));
                }
            }
        }
        let lag: Vec<(Labels<'_>, i64)> = lag
            .iter()
            .map(|(g, s, p, v)| {
                (vec![("group", esc(g.as_str())), ("stream", esc(s.as_str())), ("partition", esc(p.as_str()))], *v)
            })
            .collect();
        gauges(
            &mut enc,
            "consumer_group_lag",
            "Records between a consumer group's committed offset and the partition end.",
            None,
            &lag,
        )?;

        // The Parquet exporter.
        let exports = hub.exports.read().clone();
        let mut rows = Vec::new();
        let mut files = Vec::new();
        let mut failures = Vec::new();
        let mut export_lag = Vec::new();
        for e in &exports {
            rows.push((vec![("stream", esc(&e.stream))], e.rows()));
            files.push((vec![("stream", esc(&e.stream))], e.files()));
            failures.push((vec![("stream", esc(&e.stream))], e.parse_failures()));
            for p in &e.partitions {
                let end = engine.partition_by_name(&p.partition).map_or(0, |h| h.log.bounds().end);
                let lag = clamp(end.saturating_sub(p.checkpoint()));
                export_lag.push((vec![("stream", esc(&e.stream)), ("partition", esc(&p.partition))], lag));
            }
        }
        counters(&mut enc, "export_rows", "Rows written to committed Parquet files.", None, &rows)?;
        counters(&mut enc, "export_files", "Parquet files committed.", None, &files)?;
        counters(
            &mut enc,
            "export_payload_parse_failures",
            "Payloads that were not valid JSON where typed JSON columns are declared (their typed columns are null; the rows are kept).",
            None,
            &failures,
        )?;
        gauges(
            &mut enc,
            "export_lag",
            "Records of a partition not yet in a committed Parquet file.",
            None,
            &export_lag,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{esc, to_prometheus_text};

    #[test]
    fn label_values_from_clients_cannot_break_the_exposition() {
        assert_eq!(esc("car-1"), "car-1");
        assert_eq!(esc("x\"} 1\naxle_up 0\\"), "x\\\"} 1\\naxle_up 0\\\\");
    }

    #[test]
    fn counters_take_their_total_name_in_prometheus_text() {
        let om = "# HELP x_sent Sent.\n# TYPE x_sent counter\n# UNIT x_sent bytes\nx_sent_total{a=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(text, "# HELP x_sent_total Sent.\n# TYPE x_sent_total counter\nx_sent_total{a=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n");
    }
}
