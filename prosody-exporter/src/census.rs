//! Jitsi's room census (`GET /room-census`) → conference-level metrics. No per-room labels: room
//! names are unbounded and private.

use daemon_kit::exposition::{Family, Sample, Type};
use serde_json::Value;

/// Upper bounds of `jitsi_prosody_room_participants`.
pub const BUCKETS: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0];

#[derive(Debug, PartialEq)]
pub struct Census {
    pub rooms: u64,
    pub participants: u64,
    pub largest_room: u64,
    pub leaked_rooms: u64,
    /// Participants of each room, for the histogram.
    pub sizes: Vec<u64>,
    /// Room entries skipped for an unexpected shape.
    pub skipped_rooms: u64,
}

/// `None` when the body is not a census at all (no `room_census` list).
pub fn parse(body: &Value) -> Option<Census> {
    let rooms = match body.get("room_census")? {
        Value::Array(rooms) => rooms.as_slice(),
        // Lua encodes an empty table as an object.
        Value::Object(map) if map.is_empty() => &[],
        _ => return None,
    };
    let mut census = Census {
        rooms: 0,
        participants: 0,
        largest_room: 0,
        leaked_rooms: 0,
        sizes: Vec::new(),
        skipped_rooms: 0,
    };
    for room in rooms {
        let participants = room.get("participants").and_then(|p| match p {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        let Some(participants) = participants else {
            census.skipped_rooms += 1;
            continue;
        };
        census.rooms += 1;
        census.participants += participants;
        census.largest_room = census.largest_room.max(participants);
        // A census without the key (older Jitsi) has no leaked rooms.
        if room.get("leaked").and_then(Value::as_bool) == Some(true) {
            census.leaked_rooms += 1;
        }
        census.sizes.push(participants);
    }
    Some(census)
}

pub fn families(census: &Census) -> Vec<Family> {
    let gauge = |name: &str, help: &str, value: u64| Family {
        name: name.into(),
        help: help.into(),
        kind: Type::Gauge,
        samples: vec![Sample::plain(value as f64)],
    };
    let mut buckets: Vec<Sample> = BUCKETS
        .iter()
        .map(|bound| {
            let count = census.sizes.iter().filter(|size| **size as f64 <= *bound).count();
            let mut sample = Sample::labelled("le", &bound.to_string(), count as f64);
            sample.suffix = "_bucket";
            sample
        })
        .collect();
    let mut infinity = Sample::labelled("le", "+Inf", census.sizes.len() as f64);
    infinity.suffix = "_bucket";
    buckets.push(infinity);
    let mut sum = Sample::plain(census.participants as f64);
    sum.suffix = "_sum";
    let mut count = Sample::plain(census.sizes.len() as f64);
    count.suffix = "_count";
    buckets.extend([sum, count]);
    vec![
        gauge(
            "jitsi_prosody_rooms",
            "Conference rooms (Jitsi's room census)",
            census.rooms,
        ),
        gauge(
            "jitsi_prosody_participants",
            "Participants in all rooms, Jicofo's focus not counted",
            census.participants,
        ),
        gauge(
            "jitsi_prosody_largest_room",
            "Participants of the largest room",
            census.largest_room,
        ),
        gauge(
            "jitsi_prosody_leaked_rooms",
            "Rooms Jitsi marks as leaked (left open without participants)",
            census.leaked_rooms,
        ),
        Family {
            name: "jitsi_prosody_room_participants".into(),
            help: "Rooms by number of participants".into(),
            kind: Type::Histogram,
            samples: buckets,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rooms_of_1_2_and_5() {
        let body = json!({ "room_census": [
            { "room_name": "a@conference.meet.test", "participants": 1, "created_time": 1, "leaked": false },
            { "room_name": "b@conference.meet.test", "participants": 2.0, "leaked": true },
            { "room_name": "c@conference.meet.test", "participants": "5" },
            { "room_name": "d@conference.meet.test", "participants": null }
        ]});
        let census = parse(&body).unwrap();
        assert_eq!(
            (
                census.rooms,
                census.participants,
                census.largest_room,
                census.leaked_rooms,
                census.skipped_rooms
            ),
            (3, 8, 5, 1, 1)
        );
        let mut text = String::new();
        daemon_kit::exposition::encode(&families(&census), &mut text);
        for line in [
            "jitsi_prosody_room_participants_bucket{le=\"1\"} 1",
            "jitsi_prosody_room_participants_bucket{le=\"2\"} 2",
            "jitsi_prosody_room_participants_bucket{le=\"4\"} 2",
            "jitsi_prosody_room_participants_bucket{le=\"5\"} 3",
            "jitsi_prosody_room_participants_bucket{le=\"+Inf\"} 3",
            "jitsi_prosody_room_participants_sum 8",
            "jitsi_prosody_room_participants_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn empty_census_in_both_encodings_and_non_census_bodies() {
        assert_eq!(parse(&json!({ "room_census": [] })).unwrap().rooms, 0);
        assert_eq!(parse(&json!({ "room_census": {} })).unwrap().rooms, 0);
        assert!(parse(&json!({ "rooms": [] })).is_none());
        assert!(parse(&json!([1])).is_none());
    }
}
