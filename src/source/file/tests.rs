use super::*;

/// Hands out at most `n` bytes a read, so items straddle reads everywhere.
struct Chunked<'a>(&'a [u8], usize);

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Where [`Scan`] ends the value at the start of `text`, fed all at once and byte by byte.
fn end_of(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let whole = Scan::after(bytes[0]).feed(&bytes[1..]).map(|i| i + 1);
    let mut scan = Scan::after(bytes[0]);
    let bytewise = (1..bytes.len()).find_map(|i| scan.feed(&bytes[i..=i]).map(|n| i + n));
    assert_eq!(whole, bytewise, "{text}");
    whole
}

#[test]
fn scan_finds_where_each_kind_of_value_ends() {
    let cases = [
        (r#"{"a":"}"} tail"#, Some(9)),
        (r#"{"a":"\"}"}, tail"#, Some(11)),
        (r#"{"a":"\\"}, tail"#, Some(10)),
        (r#"[1,[2,{"]":3}]] ,"#, Some(15)),
        (r#""a \" ] string", next"#, Some(15)),
        ("42,", Some(2)),
        ("null]", Some(4)),
        ("true}", Some(4)),
        ("-1.5e3\n", Some(6)),
        (r#"{"open": ["#, None),
        (r#""unterminated \""#, None),
    ];
    for (text, want) in cases {
        assert_eq!(end_of(text), want, "{text}");
    }
}

fn layout_of(text: &[u8]) -> Layout {
    Input::new(Chunked(text, 5)).layout().unwrap()
}

#[test]
fn the_layout_is_judged_from_the_start() {
    let mut zeros = b"{".to_vec();
    zeros.resize(2 * MAX_ENTRY_BYTES, 0);
    let cases: [(&[u8], Layout); 8] = [
        (b"", Layout::Empty),
        (b" \n\r\n\t", Layout::Empty),
        (b"{\"a\":1}\n{\"b\":2}\n", Layout::Lines),
        (b"  [\n{\"a\":1}]", Layout::Documents),
        (b"\n{\n  \"a\": {\"b\": 1}\n}\n{\n}\n", Layout::Documents),
        // Cut off at the start: the first line is broken, and is one skip of NDJSON.
        (b"ce\":{\"type\":\"x\"}}\n{\"b\":2}\n", Layout::Lines),
        // Cut off just where an inner object starts: it closes, but not at the line's end.
        (b"{\"type\":\"x\"}},\"t\":1}\n{\"b\":2}\n", Layout::Lines),
        (&zeros, Layout::Lines),
    ];
    for (text, want) in cases {
        let shown = String::from_utf8_lossy(&text[..text.len().min(40)]).into_owned();
        assert_eq!(layout_of(text), want, "{shown:?}");
    }
}

#[test]
fn a_long_line_is_dropped_in_the_fixed_buffer_and_reading_goes_on() {
    let mut text = b"first\n".to_vec();
    text.extend(std::iter::repeat_n(b'g', 3 * MAX_ENTRY_BYTES));
    text.extend(b"\r\nlast");
    let mut input = Input::new(Chunked(&text, READ_BUFFER / 3));
    let size = input.buf.len();
    let mut got = Vec::new();
    loop {
        match input.line().unwrap() {
            Line::Whole(l) => got.push(String::from_utf8(l.to_vec()).unwrap()),
            Line::TooLong => got.push("too long".to_owned()),
            Line::Eof => break,
        }
    }
    assert_eq!(got, ["first", "too long", "last"]);
    assert_eq!(input.buf.len(), size, "the buffer never grows");
}

#[test]
fn a_long_array_element_is_dropped_in_the_fixed_buffer_and_reading_goes_on() {
    let mut text = b"[\"".to_vec();
    text.extend(std::iter::repeat_n(b'x', 3 * MAX_ENTRY_BYTES));
    text.extend(b"\" , {\"a\": \"]\"} ]");
    let mut input = Input::new(Chunked(&text, 1000));
    let size = input.buf.len();
    assert_eq!(input.peek().unwrap(), Some(b'['));
    input.consume(1);
    assert_eq!(input.peek().unwrap(), Some(b'"'));
    assert!(matches!(
        input.value(Within::Array).unwrap(),
        Value::TooLong
    ));
    assert_eq!(input.peek().unwrap(), Some(b','));
    input.consume(1);
    input.peek().unwrap();
    let Value::Whole(v) = input.value(Within::Array).unwrap() else {
        panic!("the second element is whole")
    };
    assert_eq!(v, br#"{"a": "]"}"#);
    assert_eq!(input.offset(), text.len() as u64 - 2);
    assert_eq!(input.buf.len(), size, "the buffer never grows");
}
