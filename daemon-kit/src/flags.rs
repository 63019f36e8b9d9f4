//! Parsers for flag values the daemons share.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The node ports the API server allows (its `--service-node-port-range`), as `30000-32767`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for NodePortRange {
    fn default() -> Self {
        Self {
            first: 30000,
            last: 32767,
        }
    }
}

impl NodePortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for NodePortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} is not a port range like 30000-32767");
        let (first, last) = text.trim().split_once('-').ok_or_else(invalid)?;
        let first: u16 = first.trim().parse().map_err(|_| invalid())?;
        let last: u16 = last.trim().parse().map_err(|_| invalid())?;
        if first == 0 || first > last {
            return Err(invalid());
        }
        Ok(Self { first, last })
    }
}

/// A size in bytes: `4194304`, `512KiB`, `4MiB`, `1GiB` (powers of 1024; `K`, `M`, `G` mean the same).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("{text:?} is not a size like 4MiB, 512KiB or 1048576");
    let value: usize = number.parse().map_err(|_| invalid())?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    value.checked_mul(factor).ok_or_else(invalid)
}

/// `90`, `90s`, `500ms`, `15m`, `3h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 3h"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        _ => return Err(format!("{text:?} is not a duration like 30s, 5m or 3h")),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_range_parses_and_refuses_nonsense() {
        assert_eq!(
            "30000-32767".parse(),
            Ok(NodePortRange {
                first: 30000,
                last: 32767
            })
        );
        assert_eq!(
            " 1 - 65535 ".parse(),
            Ok(NodePortRange {
                first: 1,
                last: 65535
            })
        );
        for bad in ["", "30000", "32767-30000", "0-10", "a-b", "30000-70000"] {
            assert!(bad.parse::<NodePortRange>().is_err(), "{bad}");
        }
        assert!(NodePortRange::default().contains(32767));
        assert!(!NodePortRange::default().contains(32768));
        assert_eq!(NodePortRange::default().to_string(), "30000-32767");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("2 M"), Ok(2 << 20));
        for bad in ["", "MiB", "4MB", "-1", "1.5MiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10800)));
        for bad in ["", "s", "1d", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
