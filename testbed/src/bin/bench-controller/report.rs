//! The benchmark's markdown table: one column per subject, then the ratios of ours to metacontroller at
//! its default QPS and to the floor, where the row compares like with like.

use crate::Sizes;
use crate::phases::{Figures, Spread};

type Text = Box<dyn Fn(&Figures) -> Option<String>>;
type Number = fn(&Figures) -> Option<f64>;

struct Row {
    measure: String,
    text: Text,
    /// The figure the ratio columns divide (lower is better).
    ratio: Option<Number>,
}

fn spread(s: Option<Spread>) -> Option<String> {
    let s = s?;
    Some(format!("{:.0} / {:.0} / {:.0} ms", s.p50, s.p99, s.max))
}

fn fine_spread(s: Option<Spread>) -> Option<String> {
    let s = s?;
    Some(format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p99, s.max))
}

fn rows(sizes: Sizes) -> Vec<Row> {
    let total = sizes.sets * sizes.pods;
    let steady = sizes.steady.as_secs();
    let row = |measure: String, text: Text, ratio: Option<Number>| Row { measure, text, ratio };
    vec![
        row(
            format!(
                "{} StatefulSets × {} pods created at once → all {total} Services",
                sizes.sets, sizes.pods
            ),
            Box::new(|f| Some(format!("{:.1} s", f.bulk_seconds))),
            Some(|f| Some(f.bulk_seconds)),
        ),
        row(
            "StatefulSet created → all its Services, p50 / p99 / max".to_owned(),
            Box::new(|f| {
                let s = f.set_to_all?;
                Some(format!(
                    "{:.1} / {:.1} / {:.1} s",
                    s.p50 / 1e3,
                    s.p99 / 1e3,
                    s.max / 1e3
                ))
            }),
            Some(|f| Some(f.set_to_all?.p99)),
        ),
        row(
            "bulk: pod created → its Service, p50 / p99 / max (negative: Service first)".to_owned(),
            Box::new(|f| spread(f.bulk_pod_to_service)),
            None,
        ),
        row(
            "bulk: Service writes".to_owned(),
            Box::new(|f| Some(format!("{:.0}", f.bulk_service_writes))),
            Some(|f| Some(f.bulk_service_writes)),
        ),
        row(
            "bulk: controller CPU time".to_owned(),
            Box::new(|f| Some(format!("{:.1} s", f.bulk_cpu_seconds?))),
            Some(|f| f.bulk_cpu_seconds),
        ),
        row(
            format!(
                "steady state {steady} s (each StatefulSet touched once a minute): Service / StatefulSet / Event writes"
            ),
            Box::new(|f| {
                let w = f.steady?;
                Some(format!(
                    "{:.0} / {:.0} / {:.0}",
                    w.services, w.statefulsets, w.events
                ))
            }),
            None,
        ),
        row(
            format!("steady state {steady} s: Lease writes (leader election)"),
            Box::new(|f| Some(format!("{:.0}", f.steady?.leases))),
            None,
        ),
        row(
            format!("steady state {steady} s: controller CPU time"),
            Box::new(|f| Some(format!("{:.2} s", f.steady_cpu_seconds?))),
            Some(|f| f.steady_cpu_seconds),
        ),
        row(
            format!(
                "{total} in place, bridges added one at a time: scale request → Service, p50 / p99 / max"
            ),
            Box::new(|f| fine_spread(f.scale_to_service)),
            Some(|f| Some(f.scale_to_service?.p99)),
        ),
        row(
            format!("{total} in place, bridges added one at a time: pod → Service, p50 / p99 / max"),
            Box::new(|f| fine_spread(f.one_by_one_pod_to_service)),
            None,
        ),
        row(
            "kube-apiserver killed and restarted (5 times), then a bridge added: its Service after /readyz, p50 / p99 / max"
                .to_owned(),
            Box::new(|f| fine_spread(f.restart_to_service)),
            Some(|f| Some(f.restart_to_service?.max)),
        ),
        row(
            "scale 3 → 1 while pod 2 drains (held Terminating): its Service".to_owned(),
            Box::new(|f| f.drain.clone()),
            None,
        ),
        row(
            "StatefulSet deleted while the controller is down".to_owned(),
            Box::new(|f| f.deleted_while_down.clone()),
            None,
        ),
        row(
            "controller CPU time, whole run".to_owned(),
            Box::new(|f| Some(format!("{:.1} s", f.controller?.cpu_seconds))),
            Some(|f| Some(f.controller?.cpu_seconds)),
        ),
        row(
            "controller peak RSS before the restarts (bulk, steady state, one by one)".to_owned(),
            Box::new(|f| Some(format!("{:.1} MiB", f.rss_before_restarts?))),
            Some(|f| f.rss_before_restarts),
        ),
        row(
            "controller peak RSS, whole run".to_owned(),
            Box::new(|f| Some(format!("{:.1} MiB", f.controller?.peak_rss_mib))),
            Some(|f| Some(f.controller?.peak_rss_mib)),
        ),
        row(
            "hook server (jsonnet): CPU time / peak RSS".to_owned(),
            Box::new(|f| {
                let c = f.hooks?;
                Some(format!("{:.1} s / {:.1} MiB", c.cpu_seconds, c.peak_rss_mib))
            }),
            None,
        ),
    ]
}

pub fn render(columns: &[(&str, Figures)], sizes: Sizes) -> String {
    let find = |prefix: &str| {
        columns
            .iter()
            .find(|(label, _)| label.starts_with(prefix))
            .map(|(_, f)| f)
    };
    let ours = find("service-per-pod");
    let baselines: Vec<(&str, &Figures)> = [
        ("ours / metacontroller default", find("metacontroller (default")),
        ("ours / floor", find("floor")),
    ]
    .into_iter()
    .filter_map(|(title, figures)| Some((title, figures?)))
    .collect();
    let mut out = String::new();
    out.push_str("| measure |");
    for (label, _) in columns {
        out.push_str(&format!(" {label} |"));
    }
    for (title, _) in &baselines {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len() + baselines.len()));
    out.push('\n');
    for row in rows(sizes) {
        out.push_str(&format!("| {} |", row.measure));
        for (_, figures) in columns {
            out.push_str(&format!(
                " {} |",
                (row.text)(figures).unwrap_or_else(|| "—".to_owned())
            ));
        }
        for (_, baseline) in &baselines {
            let ratio = row
                .ratio
                .zip(ours)
                .and_then(|(number, ours)| Some((number(ours)?, number(baseline)?)))
                .filter(|(_, theirs)| *theirs > 0.0)
                .map(|(ours, theirs)| format!("{:.2}", ours / theirs));
            out.push_str(&format!(" {} |", ratio.unwrap_or_else(|| "—".to_owned())));
        }
        out.push('\n');
    }
    out
}
