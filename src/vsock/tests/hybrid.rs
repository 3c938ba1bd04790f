use std::path::Path;

use super::super::hybrid::*;

#[test]
fn connect_line_in_one_piece_with_trailing_stream_data() {
    let mut p = LineParser::new(LineKind::Connect);
    assert_eq!(p.feed(b"CONNECT 52\nhello"), Ok(Some((52, 11))));
    assert_eq!(p.feed(b"more"), Err(HybridError::Done));
}

#[test]
fn connect_line_byte_by_byte() {
    let mut p = LineParser::new(LineKind::Connect);
    let line = connect_line(4_294_967_295);
    let (last, head) = line.as_bytes().split_last().unwrap();
    for b in head {
        assert_eq!(p.feed(&[*b]), Ok(None));
    }
    assert_eq!(p.feed(&[*last]), Ok(Some((u32::MAX, 1))));
}

#[test]
fn tolerated_variants() {
    for line in ["CONNECT 7\r\n", "CONNECT   7\n", " CONNECT 7 \n"] {
        let mut p = LineParser::new(LineKind::Connect);
        assert_eq!(
            p.feed(line.as_bytes()),
            Ok(Some((7, line.len()))),
            "{line:?}"
        );
    }
    let mut p = LineParser::new(LineKind::Ok);
    assert_eq!(p.feed(ok_line(1025).as_bytes()), Ok(Some((1025, 8))));
}

#[test]
fn junk_is_refused_with_what_was_wrong() {
    let cases: &[&[u8]] = &[
        b"CONECT 5\n",
        b"connect 5\n",
        b"CONNECT\n",
        b"CONNECT 5 6\n",
        b"\n",
        b"CONNECT \xff\n",
        b"OK 5\n",
    ];
    for c in cases {
        let mut p = LineParser::new(LineKind::Connect);
        assert!(
            matches!(
                p.feed(c),
                Err(HybridError::Malformed {
                    expected: "CONNECT",
                    ..
                })
            ),
            "{c:?}"
        );
    }
    for port in ["-1", "+5", "4294967296", "0x10", "5a"] {
        let mut p = LineParser::new(LineKind::Connect);
        let line = format!("CONNECT {port}\n");
        assert_eq!(
            p.feed(line.as_bytes()),
            Err(HybridError::BadPort(port.into()))
        );
    }
    let e = LineParser::new(LineKind::Connect)
        .feed(b"GET / HTTP/1.0\n")
        .unwrap_err();
    assert!(e.to_string().contains("CONNECT <port>"), "{e}");
}

#[test]
fn a_line_without_newline_is_bounded() {
    let mut p = LineParser::new(LineKind::Connect);
    assert_eq!(p.feed(&[b' '; MAX_LINE - 1]), Ok(None));
    assert_eq!(p.feed(b"xx"), Err(HybridError::LineTooLong));
    let mut p = LineParser::new(LineKind::Connect);
    assert_eq!(p.feed(&[b'C'; 1000]), Err(HybridError::LineTooLong));
}

#[test]
fn guest_to_host_ports_map_to_suffixed_paths() {
    assert_eq!(
        guest_listener_path(Path::new("/run/vm1.vsock"), 1234),
        Path::new("/run/vm1.vsock_1234")
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"/tmp/\xffvm");
        let p = guest_listener_path(Path::new(raw), 2);
        assert_eq!(p.as_os_str().as_bytes(), b"/tmp/\xffvm_2");
    }
}
