use super::*;

fn all_kinds() -> Vec<Msg> {
    vec![
        Msg::Hello { version: VERSION },
        Msg::Stdout(b"out\0\xff".to_vec()),
        Msg::Stderr(Vec::new()),
        Msg::Exited(ExitStatus::Code(255)),
        Msg::Exited(ExitStatus::Signal(9)),
        Msg::Exited(ExitStatus::OomKilled(137)),
        Msg::Failed("sh: not found".into()),
        Msg::Exec(Exec {
            argv: vec![
                b"printf".to_vec(),
                b"%s\n".to_vec(),
                Vec::new(),
                b"$HOME 'q' \xfe".to_vec(),
            ],
            env: vec![b"A=1".to_vec()],
            workdir: Some(b"/tmp".to_vec()),
            tty: Some(WinSize { rows: 24, cols: 80 }),
        }),
        Msg::Exec(Exec {
            argv: vec![b"true".to_vec()],
            env: Vec::new(),
            workdir: None,
            tty: None,
        }),
        Msg::Stdin(vec![7; 1000]),
        Msg::Signal(15),
        Msg::CopyIn(b"/work dir/\xff".to_vec()),
        Msg::Tar(vec![0; 512]),
        Msg::Tar(Vec::new()),
        Msg::CopyOut(b"/out".to_vec()),
        Msg::Done(None),
        Msg::Done(Some("no such file".into())),
        Msg::Credit(STDIN_WINDOW),
        Msg::Resize(WinSize {
            rows: 65535,
            cols: 1,
        }),
        Msg::Setup(good_setup()),
    ]
}

#[test]
fn every_message_round_trips() {
    for msg in all_kinds() {
        let frame = msg.encode();
        assert_eq!(Msg::decode(&frame), Ok(Some((msg.clone(), frame.len()))));
        // Any proper prefix is "not yet".
        for cut in 0..frame.len() {
            assert_eq!(Msg::decode(&frame[..cut]), Ok(None), "{msg:?} cut at {cut}");
        }
        let mut r = &frame[..];
        assert_eq!(read_msg(&mut r).unwrap(), Some(msg));
        assert_eq!(read_msg(&mut r).unwrap(), None, "clean end");
    }
}

#[test]
fn exit_status_reads_like_a_shell() {
    assert_eq!(ExitStatus::Code(7).shell_code(), 7);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
}

fn good_setup() -> Setup {
    Setup {
        time_ns: 1_765_000_000_000_000_000,
        entropy: vec![0xa5; 64],
        hostname: b"kiln-0123abcd".to_vec(),
        machine_id: b"0123456789abcdef0123456789ABCDEF".to_vec(),
    }
}

#[test]
fn bad_frames_are_errors_not_panics() {
    assert_eq!(
        Msg::decode(&[0x7f, 0, 0, 0, 0]),
        Err(ProtoError::UnknownType(0x7f))
    );
    let huge = [kind::STDOUT, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        Msg::decode(&huge),
        Err(ProtoError::TooLong(u32::MAX as usize))
    );
    let mut r = &huge[..];
    assert!(read_msg(&mut r).is_err(), "no 4 GiB allocation either");
    // A HELLO with a short payload, an EXITED with a bad signal, an EXEC
    // whose list count runs past the frame or with no program.
    for frame in [
        vec![kind::HELLO, 2, 0, 0, 0, 1, 0],
        vec![kind::CREDIT, 5, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![kind::EXITED, 5, 0, 0, 0, 1, 0xff, 0, 0, 0],
        vec![kind::EXITED, 5, 0, 0, 0, 9, 0, 0, 0, 0],
        vec![kind::EXEC, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f],
        Msg::Exec(Exec::default()).encode(),
        [Msg::Signal(1).encode(), vec![0]].concat(),
        Msg::CopyIn(Vec::new()).encode(),
        Msg::CopyOut(b"a\0b".to_vec()).encode(),
        vec![kind::DONE, 0, 0, 0, 0, 2, 0, 0, 0, 0],
        Msg::Setup(Setup {
            entropy: vec![0; MAX_ENTROPY + 1],
            ..good_setup()
        })
        .encode(),
        Msg::Setup(Setup {
            hostname: Vec::new(),
            ..good_setup()
        })
        .encode(),
        Msg::Setup(Setup {
            hostname: vec![b'h'; 65],
            ..good_setup()
        })
        .encode(),
        Msg::Setup(Setup {
            machine_id: b"not hex".to_vec(),
            ..good_setup()
        })
        .encode(),
    ] {
        let mut fixed = frame.clone();
        let len = (fixed.len() - HEADER_LEN) as u32;
        fixed[1..5].copy_from_slice(&len.to_le_bytes());
        assert!(
            matches!(Msg::decode(&fixed), Err(ProtoError::Malformed { .. })),
            "{fixed:?}"
        );
    }
    // A stream that stops inside a frame.
    let frame = Msg::Stdout(b"abc".to_vec()).encode();
    let mut r = &frame[..6];
    assert!(read_msg(&mut r).is_err());
}

#[test]
fn seeded_garbage_never_panics() {
    // A small deterministic fuzz of the parser: random bytes, and valid
    // frames with random bytes flipped.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let frames: Vec<Vec<u8>> = all_kinds().iter().map(Msg::encode).collect();
    for round in 0..20_000 {
        let mut buf = if round % 2 == 0 {
            (0..(next() % 64))
                .map(|_| next() as u8)
                .collect::<Vec<u8>>()
        } else {
            frames[(next() % frames.len() as u64) as usize].clone()
        };
        if !buf.is_empty() {
            for _ in 0..(next() % 4) {
                let i = (next() % buf.len() as u64) as usize;
                buf[i] = next() as u8;
            }
        }
        if let Ok(Some((_, used))) = Msg::decode(&buf) {
            assert!(used <= buf.len());
        }
        let _ = read_msg(&mut &buf[..]);
    }
}

#[test]
fn long_data_is_split_into_frames() {
    let data = vec![1u8; MAX_PAYLOAD * 2 + 10];
    let mut out = Vec::new();
    write_data(&mut out, &data, Msg::Stdout).unwrap();
    let mut r = &out[..];
    let mut total = 0;
    while let Some(Msg::Stdout(d)) = read_msg(&mut r).unwrap() {
        assert!(d.len() <= MAX_PAYLOAD && !d.is_empty());
        total += d.len();
    }
    assert_eq!(total, data.len());
}

#[test]
fn a_frame_buffer_makes_the_frames_encode_makes() {
    let mut f = FrameBuf::new(kind::STDERR, 8);
    f.payload()[..3].copy_from_slice(b"abc");
    assert_eq!(f.frame(3), Msg::Stderr(b"abc".to_vec()).encode());
    assert_eq!(f.frame(0), Msg::Stderr(Vec::new()).encode());
    assert_eq!(f.payload().len(), 8);
}
