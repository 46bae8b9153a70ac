//! Differential test: the parsed dump equals what `conntrack -L -o extended,id` prints for the
//! same table, field by field (root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::HashMap;

use common::*;
use ctnetlink::{DumpFilter, Family, Flow, NewFlow, Status, proto};

/// One line of `conntrack -L -o extended,id`, in its own words.
#[derive(Debug, Default)]
struct Line {
    family: String,
    proto: u8,
    timeout: u32,
    /// key=value pairs of the original direction, then of the reply direction.
    orig: HashMap<String, String>,
    reply: HashMap<String, String>,
    unreplied: bool,
    assured: bool,
    mark: u32,
    zone: u16,
    id: u32,
}

fn parse_line(line: &str) -> Line {
    let mut words = line.split_whitespace();
    let mut parsed = Line {
        family: words.next().unwrap().to_string(),
        ..Line::default()
    };
    let _family_number = words.next().unwrap();
    let _proto_name = words.next().unwrap();
    parsed.proto = words.next().unwrap().parse().unwrap();
    parsed.timeout = words.next().unwrap().parse().unwrap();
    let mut in_reply = false;
    // ICMP tuples have an `id=` too; the entry's id is the one after `use=`.
    let mut after_use = false;
    for word in words {
        match word {
            "[UNREPLIED]" => parsed.unreplied = true,
            "[ASSURED]" => parsed.assured = true,
            word if word.starts_with('[') => {}
            word => {
                let (key, value) = word.split_once('=').unwrap();
                match key {
                    "mark" => parsed.mark = value.parse().unwrap(),
                    "zone" => parsed.zone = value.parse().unwrap(),
                    "id" if after_use => parsed.id = value.parse().unwrap(),
                    "use" => after_use = true,
                    key => {
                        let side = if in_reply {
                            &mut parsed.reply
                        } else {
                            &mut parsed.orig
                        };
                        if side.contains_key(key) {
                            in_reply = true;
                            parsed.reply.insert(key.into(), value.into());
                        } else {
                            side.insert(key.into(), value.into());
                        }
                    }
                }
            }
        }
    }
    parsed
}

fn assert_tuple(side: &HashMap<String, String>, tuple: &ctnetlink::Tuple, what: &str) {
    assert_eq!(side["src"], tuple.src.to_string(), "{what} src");
    assert_eq!(side["dst"], tuple.dst.to_string(), "{what} dst");
    if proto::is_icmp(tuple.proto) {
        assert_eq!(side["id"], tuple.sport.to_string(), "{what} icmp id");
        assert_eq!(
            side["type"],
            (tuple.dport >> 8).to_string(),
            "{what} icmp type"
        );
        assert_eq!(
            side["code"],
            (tuple.dport & 0xff).to_string(),
            "{what} icmp code"
        );
    } else {
        assert_eq!(side["sport"], tuple.sport.to_string(), "{what} sport");
        assert_eq!(side["dport"], tuple.dport.to_string(), "{what} dport");
    }
}

#[test]
fn parsed_dump_equals_conntrack_tools_output_field_by_field() {
    let Some((ns, mut ct)) = setup("parsed_dump_equals_conntrack_tools_output_field_by_field")
    else {
        return;
    };
    let mut flows: Vec<NewFlow> = Vec::new();
    for i in 0..40u32 {
        let mut flow = if i % 3 == 0 { udp6(i) } else { udp4(i) };
        flow.mark = i * 1000;
        flow.zone = (i % 5) as u16 * 100;
        flow.timeout = 300 + i;
        flow.status = match i % 4 {
            0 => Status::NONE,
            1 => Status::SEEN_REPLY,
            _ => Status::SEEN_REPLY | Status::ASSURED,
        };
        flows.push(flow);
    }
    flows.extend((1..4u16).map(|i| icmp(i, false)));
    flows.extend((1..4u16).map(|i| icmp(i, true)));
    create_all(&mut ct, &flows);

    let dumped: Vec<Flow> = dump_all(&mut ct, &DumpFilter::all());
    let out = ns
        .exec_checked(["conntrack", "-L", "-o", "extended,id"])
        .expect("conntrack -L");
    let lines: HashMap<u32, Line> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(parse_line)
        .map(|line| (line.id, line))
        .collect();
    assert_eq!(lines.len(), flows.len());
    assert_eq!(dumped.len(), flows.len());
    for flow in &dumped {
        let line = lines
            .get(&flow.id)
            .unwrap_or_else(|| panic!("conntrack did not print id {}: {flow:?}", flow.id));
        let family = match flow.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        assert_eq!(line.family, family);
        assert_eq!(line.proto, flow.orig.proto);
        assert_tuple(&line.orig, &flow.orig, "orig");
        assert_tuple(&line.reply, &flow.reply, "reply");
        assert_eq!(
            line.unreplied,
            !flow.status.contains(Status::SEEN_REPLY),
            "{flow:?}"
        );
        assert_eq!(
            line.assured,
            flow.status.contains(Status::ASSURED),
            "{flow:?}"
        );
        assert_eq!(line.mark, flow.mark);
        assert_eq!(line.zone, flow.zone);
        // Both read a clock that ticks between the two dumps.
        assert!(
            line.timeout.abs_diff(flow.timeout) <= 2,
            "{} vs {flow:?}",
            line.timeout
        );
    }
}
