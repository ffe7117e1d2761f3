//! kd-data's RandAugment ops against Pillow's outputs (`tests/fixtures/randaugment.json`, made
//! by `tests/fixtures/make_randaugment_fixture.py`): every case must match bit for bit.
//! `RANDAUGMENT_FIXTURE=PATH` runs the same check on another file of that format (the script's
//! `--stress` output, too large to commit).

use std::collections::HashMap;

use kd_data::randaugment::{apply_ops, Op};

const FIXTURE: &str = include_str!("fixtures/randaugment.json");

// ------------------------------------------------------ a minimal JSON reader (no serde here)

#[derive(Debug, Clone)]
enum Json {
    /// `true`, `false` or `null` (the fixture needs none of their values).
    Literal,
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Some(Json::Str(s)) => s,
            other => panic!("fixture: {key} is {other:?}, not a string"),
        }
    }
    fn num(&self, key: &str) -> f64 {
        match self.get(key) {
            Some(Json::Num(v)) => *v,
            other => panic!("fixture: {key} is {other:?}, not a number"),
        }
    }
    fn arr(&self, key: &str) -> &[Json] {
        match self.get(key) {
            Some(Json::Arr(v)) => v,
            other => panic!("fixture: {key} is {other:?}, not an array"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(self.s.get(self.i), Some(&c), "fixture JSON: expected {:?} at byte {}", c as char, self.i);
        self.i += 1;
    }
    fn peek(&mut self) -> u8 {
        self.ws();
        self.s[self.i]
    }
    fn string(&mut self) -> String {
        self.eat(b'"');
        let start = self.i;
        while self.s[self.i] != b'"' {
            assert_ne!(self.s[self.i], b'\\', "fixture JSON: escapes are not expected");
            self.i += 1;
        }
        self.i += 1;
        String::from_utf8(self.s[start..self.i - 1].to_vec()).expect("fixture JSON: UTF-8")
    }
    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                if self.peek() == b'}' {
                    self.i += 1;
                    return Json::Obj(kv);
                }
                loop {
                    let k = self.string();
                    self.eat(b':');
                    kv.push((k, self.value()));
                    if self.peek() == b',' {
                        self.i += 1;
                    } else {
                        self.eat(b'}');
                        return Json::Obj(kv);
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                if self.peek() == b']' {
                    self.i += 1;
                    return Json::Arr(v);
                }
                loop {
                    v.push(self.value());
                    if self.peek() == b',' {
                        self.i += 1;
                    } else {
                        self.eat(b']');
                        return Json::Arr(v);
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' | b'f' | b'n' => {
                for word in ["true", "false", "null"] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Json::Literal;
                    }
                }
                panic!("fixture JSON: bad literal at byte {}", self.i)
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(self.s[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ascii");
                Json::Num(text.parse().unwrap_or_else(|_| panic!("fixture JSON: bad number {text:?}")))
            }
        }
    }
}

fn parse(s: &str) -> Json {
    let mut p = Parser { s: s.as_bytes(), i: 0 };
    p.value()
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("fixture: bad base64 byte {c}"),
        }
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut acc = 0u32;
        for (k, &c) in data.iter().enumerate() {
            acc |= val(c) << (18 - 6 * k);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..data.len()]);
    }
    out
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn op_of(j: &Json) -> Op {
    let name = j.str("op");
    let v = || j.num("v");
    match name {
        "AutoContrast" => Op::AutoContrast,
        "Brightness" => Op::Brightness(v()),
        "Color" => Op::Color(v()),
        "Contrast" => Op::Contrast(v()),
        "Equalize" => Op::Equalize,
        "Identity" => Op::Identity,
        "Posterize" => Op::Posterize(v()),
        "Rotate" => Op::Rotate(v()),
        "Sharpness" => Op::Sharpness(v()),
        "ShearX" => Op::ShearX(v()),
        "ShearY" => Op::ShearY(v()),
        "Solarize" => Op::Solarize(v()),
        "TranslateX" => Op::TranslateX(v()),
        "TranslateY" => Op::TranslateY(v()),
        "Cutout" => Op::Cutout { cx: j.num("cx"), cy: j.num("cy"), v: v() },
        other => panic!("fixture: unknown op {other}"),
    }
}

struct Image {
    h: usize,
    w: usize,
    data: Vec<u8>,
}

#[test]
fn every_op_matches_pillow_bit_for_bit() {
    let text = match std::env::var_os("RANDAUGMENT_FIXTURE") {
        Some(path) => {
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()))
        }
        None => FIXTURE.to_string(),
    };
    let fx = parse(&text);
    let pillow = fx.str("pillow").to_string();
    let images: HashMap<String, Image> = fx
        .arr("images")
        .iter()
        .map(|im| {
            let (h, w) = (im.num("h") as usize, im.num("w") as usize);
            let data = base64(im.str("b64"));
            assert_eq!(data.len(), h * w * 3);
            (im.str("name").to_string(), Image { h, w, data })
        })
        .collect();

    let cases = fx.arr("cases");
    assert!(cases.len() > 200, "fixture has only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for case in cases {
        let name = case.str("image");
        let im = &images[name];
        let ops: Vec<Op> = case.arr("ops").iter().map(op_of).collect();
        for op in case.arr("ops") {
            kinds.insert(op.str("op").to_string());
        }
        let got = apply_ops(&im.data, im.h, im.w, &ops);
        match (case.get("out_b64"), case.get("out_fnv1a64")) {
            (Some(Json::Str(b64)), _) => {
                let want = base64(b64);
                if got != want {
                    let (mut n, mut max, mut first) = (0, 0u8, None);
                    for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                        if g != e {
                            n += 1;
                            max = max.max(g.abs_diff(*e));
                            first.get_or_insert((k / 3 % im.w, k / 3 / im.w, k % 3, *g, *e));
                        }
                    }
                    failures.push(format!(
                        "{ops:?} on {name} ({}×{}): {n} bytes differ, max |diff| {max}, first (x, y, c, got, pillow) {:?}",
                        im.h,
                        im.w,
                        first
                    ));
                }
            }
            (_, Some(Json::Str(sum))) => {
                let got_sum = fnv1a64(&got);
                if &got_sum != sum {
                    failures.push(format!("{ops:?} on {name}: checksum {got_sum}, Pillow's {sum}"));
                }
            }
            _ => panic!("fixture: case without an output"),
        }
    }
    assert_eq!(kinds.len(), 15, "the fixture covers the 14 ops and Cutout: {kinds:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Pillow {pillow}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
