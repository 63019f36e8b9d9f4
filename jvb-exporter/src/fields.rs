//! What we know about `/colibri/stats` fields (from jitsi-videobridge's sources and the recorded outputs in `testdata/colibri/`): which are cumulative
//! counters, booleans, strings worth an info metric, and the odd `conference_sizes`. A numeric field
//! not listed here is exported as a gauge all the same.

/// How a known field is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Cumulative since the bridge started: a true counter, `jitsi_<name without total_>_total`.
    Counter,
    /// `true`/`false` → 1/0.
    Bool,
    /// A string worth an info metric: `jitsi_<field>_info{<field>="…"} 1`.
    Info,
    /// Counts of conferences by size, in whichever shape the bridge sends.
    ConferenceSizes,
    /// Known and deliberately not exported (unbounded strings such as the bridge's clock).
    Skip,
}

const GAUGES: &[&str] = &[
    "incoming_loss",
    "outgoing_loss",
    "overall_loss",
    "rtt_aggregate",
    "stress_level",
    "average_participant_stress",
    "conferences",
    "participants",
    "endpoints",
    "local_endpoints",
    "local_active_endpoints",
    "largest_conference",
    "inactive_conferences",
    "p2p_conferences",
    "octo_conferences",
    "receive_only_endpoints",
    "inactive_endpoints",
    "octo_endpoints",
    "endpoints_sending_audio",
    "endpoints_sending_video",
    "endpoints_with_high_outgoing_loss",
    "endpoints_with_suspended_sources",
    "endpoints_with_spurious_remb",
    "num_eps_oversending",
    "visitors",
    "threads",
    "bit_rate_download",
    "bit_rate_upload",
    "packet_rate_download",
    "packet_rate_upload",
    "octo_receive_bitrate",
    "octo_send_bitrate",
    "octo_receive_packet_rate",
    "octo_send_packet_rate",
    "tcc_unmatched_feedback",
    "muc_clients_configured",
    "muc_clients_connected",
    "mucs_configured",
    "mucs_joined",
    // Older bridges (2020–2023).
    "videochannels",
    "audiochannels",
    "videostreams",
    "jitter_aggregate",
    "loss_rate_download",
    "loss_rate_upload",
    "octo_version",
    "cpu_usage",
    "used_memory",
    "total_memory",
    "largest_conference_size",
    "conference_sizes_length",
];

const COUNTERS: &[&str] = &[
    "total_conferences_created",
    "total_conferences_completed",
    "total_conference_seconds",
    "total_participants",
    "total_visitors",
    "total_relays",
    "total_keyframes_received",
    "total_layering_changes_received",
    "total_video_stream_milliseconds_received",
    "total_data_channel_messages_received",
    "total_data_channel_messages_sent",
    "total_colibri_web_socket_messages_received",
    "total_colibri_web_socket_messages_sent",
    "total_bytes_received",
    "total_bytes_sent",
    "total_packets_received",
    "total_packets_sent",
    "total_bytes_received_octo",
    "total_bytes_sent_octo",
    "total_packets_received_octo",
    "total_packets_sent_octo",
    "total_dominant_speaker_changes",
    "preemptive_kfr_sent",
    "preemptive_kfr_suppressed",
    "total_ice_failed",
    "total_ice_succeeded",
    "total_ice_succeeded_relayed",
    "endpoints_ice_failed",
    "dtls_failed_endpoints",
    "relays_ice_failed",
    "dtls_failed_relays",
    "endpoints_disconnected",
    "endpoints_reconnected",
    "num_eps_no_msg_transport_after_delay",
    "num_relays_no_msg_transport_after_delay",
    // Older bridges.
    "total_failed_conferences",
    "total_partially_failed_conferences",
    "total_loss_controlled_participant_seconds",
    "total_loss_limited_participant_seconds",
    "total_loss_degraded_participant_seconds",
    "total_packets_dropped_octo",
    "total_ice_succeeded_tcp",
    "total_channels",
    "total_no_payload_channels",
    "total_no_transport_channels",
];

const BOOLS: &[&str] = &["graceful_shutdown", "shutting_down", "drain", "healthy"];

const INFOS: &[&str] = &["version", "region", "release", "relay_id"];

/// The bridge's clock as a string: a new value every scrape, so never a label.
const SKIPPED: &[&str] = &["current_timestamp"];

pub fn kind_of(field: &str) -> Option<Kind> {
    if field == "conference_sizes" {
        Some(Kind::ConferenceSizes)
    } else if COUNTERS.contains(&field) {
        Some(Kind::Counter)
    } else if GAUGES.contains(&field) {
        Some(Kind::Gauge)
    } else if BOOLS.contains(&field) {
        Some(Kind::Bool)
    } else if INFOS.contains(&field) {
        Some(Kind::Info)
    } else if SKIPPED.contains(&field) {
        Some(Kind::Skip)
    } else {
        None
    }
}

/// Names the Go exporter gave some cumulative fields, kept with `--legacy-names` because dashboards query
/// them (its template prints these four without the `jitsi_` prefix). Every other cumulative field's
/// old name is `jitsi_<field>`. `tests`: checked against the Go exporter's whole list of names
/// (`testdata/go-exporter/metric-names.tsv`).
pub fn legacy_name(field: &str) -> Option<&'static str> {
    match field {
        "total_ice_succeeded_relayed" => Some("total_ice_succeeded_relayed"),
        "total_ice_succeeded" => Some("total_ice_succeeded"),
        "total_ice_succeeded_tcp" => Some("total_ice_succeeded_tcp"),
        "total_ice_failed" => Some("total_ice_failed"),
        _ => None,
    }
}

/// The known field names, for the bounded label of `jitsi_exporter_field_errors_total`.
pub fn known(field: &str) -> Option<&'static str> {
    [GAUGES, COUNTERS, BOOLS, INFOS, SKIPPED]
        .iter()
        .flat_map(|list| list.iter())
        .chain(std::iter::once(&"conference_sizes"))
        .find(|known| **known == field)
        .copied()
}
