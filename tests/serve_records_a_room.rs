//! End to end: `confer serve` records a room to Ogg Opus files in its data directory, the
//! mix and each participant's track, over the control API; the files are valid (checked by
//! `opusinfo`, an independent reader) and as long as the recording ran; a participant who
//! leaves has its track finished then, while the mix goes on; a SIGTERM during a recording
//! still leaves complete files.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use confer_engine::leg::LegConfig;
use leg_harness::aligned_correlation;
use serde_json::Value;
use serve_harness::{Server, speech};

const RATE: usize = 48_000;
/// A tick of the server (20 ms by default) and the 1 ms `opusinfo` rounds to: a track's
/// length is a whole number of ticks, so it is within a tick of the wall time it covered.
const TICK_SLACK_S: f64 = 0.021;

fn data_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("confer-rec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp data dir");
    d
}

/// Runs `opusinfo`: `Ok(seconds)` of playback when it accepts the file without warnings,
/// else `Err(its output)`.
fn opusinfo(path: &Path) -> Result<f64, String> {
    let out = Command::new("opusinfo")
        .arg(path)
        .output()
        .expect("opusinfo is installed (opus-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("WARNING") || text.contains("ERROR") {
        return Err(text);
    }
    // "Playback length: 0m:02.345s"
    let len = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Playback length:"))
        .unwrap_or_else(|| panic!("no playback length in:\n{text}"))
        .trim()
        .trim_end_matches('s');
    let (m, s) = len.split_once("m:").expect("m:ss format");
    Ok(m.parse::<f64>().expect("minutes") * 60.0 + s.parse::<f64>().expect("seconds"))
}

/// Runs `opusinfo`; asserts it accepts the file without warnings; returns the playback
/// length in seconds.
fn opusinfo_seconds(path: &Path) -> f64 {
    opusinfo(path).unwrap_or_else(|text| panic!("opusinfo complains about {path:?}:\n{text}"))
}

/// Which source (index into `pids`) a track file belongs to; `None` for the mix.
fn track_owner(name: &str, pids: &[u64]) -> Option<usize> {
    let track = name.strip_suffix(".opus")?.rsplit('-').next()?;
    let pid: u64 = track.strip_prefix('p')?.parse().ok()?;
    pids.iter().position(|&p| p == pid)
}

/// Decodes a file with `opusdec` (another independent reader) to 48 kHz samples.
fn opusdec(path: &Path) -> Vec<f32> {
    let wav = path.with_extension("wav");
    let out = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(path)
        .arg(&wav)
        .output()
        .expect("opusdec is installed (opus-tools)");
    assert!(out.status.success(), "opusdec failed on {path:?}: {out:?}");
    let mut reader = hound::WavReader::open(&wav).expect("opusdec wrote a wav");
    let pcm = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("valid wav")) / 32768.0)
        .collect();
    let _ = std::fs::remove_file(&wav);
    pcm
}

fn file_names(v: &Value) -> Vec<String> {
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn a_recording_with_tracks_gives_valid_files_of_the_recorded_length() {
    let dir = data_dir("tracks");
    let server = Server::start(
        2,
        10,
        &[("CONFER_DATA_DIR", dir.to_str().expect("utf-8 temp dir"))],
    );
    let room = server.create_room(r#"{"name":"rec"}"#);
    let sources = [speech(0.5, 2.0), speech(6.0, 2.0)];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (started, stopped, stop_body, pids) = runtime.block_on(async {
        let legs = serve_harness::join_speakers(
            &server,
            room,
            &sources,
            &LegConfig::default(),
            40,
            4 * RATE,
        )
        .await;
        let pids: Vec<u64> = legs.iter().map(|l| l.3).collect();
        let path = format!("/v1/rooms/{room}/recording");
        let (status, v) = server.request("POST", &path, Some(r#"{"tracks":true}"#));
        assert_eq!(status, 201, "{v}");
        let started = Instant::now();
        assert_eq!(file_names(&v).len(), 3, "mix and two tracks: {v}");
        let (status, again) = server.request("POST", &path, Some(r#"{"tracks":true}"#));
        assert_eq!(status, 409, "a second recording: {again}");
        let mut remotes = Vec::new();
        let mut runs = Vec::new();
        for (udp, io, remote, _) in legs {
            remotes.push(remote);
            runs.push(udp.run_until(io, tokio::time::sleep(Duration::from_millis(2200))));
        }
        tokio::time::timeout(Duration::from_secs(20), serve_harness::join_all(runs))
            .await
            .expect("the clients stop on their own");
        let (status, v) = server.request("DELETE", &path, None);
        let stopped = Instant::now();
        assert_eq!(status, 200, "{v}");
        (started, stopped, v, pids)
    });
    let wall = (stopped - started).as_secs_f64();
    println!("stop: {stop_body}");
    let names = file_names(&stop_body);
    assert_eq!(names.len(), 3);
    assert!(names.iter().any(|n| n.ends_with("-mix.opus")));
    for f in stop_body["files"].as_array().expect("files") {
        assert_eq!(f["failed"], false, "{f}");
    }
    for name in &names {
        let path = dir.join("recordings").join(name);
        let secs = opusinfo_seconds(&path);
        println!("{name}: {secs:.3} s by opusinfo, {wall:.3} s recorded (wall clock)");
        assert!(
            (secs - wall).abs() < 0.2,
            "{name}: {secs:.3} s for {wall:.3} s of recording"
        );
    }
    // What is in the files: each track is its participant's speech and not the other's;
    // the mix holds both.
    for (name, own) in names.iter().map(|n| (n, track_owner(n, &pids))) {
        let pcm = opusdec(&dir.join("recordings").join(name));
        for (j, src) in sources.iter().enumerate() {
            let a = aligned_correlation(src, &pcm);
            println!(
                "{name} vs source {j}: correlation {:.3} over {} windows, delay {:.1} ms",
                a.mean, a.windows, a.delay_ms
            );
            match own {
                Some(i) if i == j => assert!(a.mean > 0.45, "{name} lacks its speech"),
                Some(_) => assert!(a.mean < 0.35, "{name} holds another's speech"),
                None => assert!(a.mean > 0.45, "the mix lacks source {j}"),
            }
        }
    }
    let (status, list) = server.request("GET", "/v1/recordings", None);
    assert_eq!(status, 200, "{list}");
    let listed = list["recordings"].as_array().expect("recordings");
    assert_eq!(listed.len(), 3, "{list}");
    for l in listed {
        assert_eq!(l["room"], room);
        assert!(l["bytes"].as_u64().expect("bytes") > 1000, "{l}");
    }
    let (status, _) = server.request("DELETE", &format!("/v1/rooms/{room}/recording"), None);
    assert_eq!(status, 409, "stopping twice");
    assert!(server.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_during_a_recording_leaves_a_complete_file() {
    let dir = data_dir("sigterm");
    let server = Server::start(
        3,
        4,
        &[("CONFER_DATA_DIR", dir.to_str().expect("utf-8 temp dir"))],
    );
    let room = server.create_room(r#"{"name":"rec-term"}"#);
    let (status, v) = server.request("POST", &format!("/v1/rooms/{room}/recording"), Some("{}"));
    assert_eq!(status, 201, "{v}");
    let started = Instant::now();
    let names = file_names(&v);
    assert_eq!(names.len(), 1, "the mix only: {v}");
    std::thread::sleep(Duration::from_millis(1000));
    let status = server.stop();
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "{status:?}");
    let secs = opusinfo_seconds(&dir.join("recordings").join(&names[0]));
    println!("{}: {secs:.3} s by opusinfo, at most {wall:.3} s", names[0]);
    assert!(
        secs > 0.9 && secs <= wall + 0.05,
        "{secs:.3} s of {wall:.3} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_that_cannot_be_written_is_refused_and_the_room_carries_on() {
    let dir = data_dir("unwritable");
    // `recordings` is a file, so no recording can be created under it.
    std::fs::write(dir.join("recordings"), b"in the way").expect("a file in the way");
    let server = Server::start(
        4,
        4,
        &[("CONFER_DATA_DIR", dir.to_str().expect("utf-8 temp dir"))],
    );
    let room = server.create_room(r#"{"name":"rec-fail"}"#);
    let path = format!("/v1/rooms/{room}/recording");
    let (status, v) = server.request("POST", &path, Some(r#"{"tracks":true}"#));
    assert_eq!(status, 500, "{v}");
    assert!(
        v["error"].as_str().expect("error").contains("recording"),
        "{v}"
    );
    let (status, _) = server.request("DELETE", &path, None);
    assert_eq!(status, 409, "nothing is recording");
    let (status, v) = server.request("GET", &format!("/v1/rooms/{room}"), None);
    assert_eq!(status, 200, "{v}");
    let (status, v) = server.request("POST", "/v1/rooms/999/recording", None);
    assert_eq!(status, 404, "{v}");
    assert!(server.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_participant_who_leaves_has_its_track_finished_then_while_the_mix_goes_on() {
    let dir = data_dir("leave");
    let server = Server::start(
        1,
        10,
        &[("CONFER_DATA_DIR", dir.to_str().expect("utf-8 temp dir"))],
    );
    let room = server.create_room(r#"{"name":"rec-leave"}"#);
    let sources = [speech(0.5, 2.6), speech(6.0, 2.6)];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let mut legs = runtime.block_on(serve_harness::join_speakers(
        &server,
        room,
        &sources,
        &LegConfig::default(),
        60,
        4 * RATE,
    ));
    let pids: Vec<u64> = legs.iter().map(|l| l.3).collect();
    let path = format!("/v1/rooms/{room}/recording");
    let post_sent = Instant::now();
    let (status, v) = server.request("POST", &path, Some(r#"{"tracks":true}"#));
    let post_done = Instant::now();
    assert_eq!(status, 201, "{v}");
    let leaver_track = file_names(&v)
        .into_iter()
        .find(|n| n.ends_with(&format!("-p{}.opus", pids[1])))
        .expect("the leaver's track");
    let leaver_path = dir.join("recordings").join(&leaver_track);
    // A second client of the same room is the rejoiner: a new participant, a new track.
    let rejoin_socket = std::net::UdpSocket::bind(loopback).expect("bind");
    let (leave_sent, leave_done, leaver_secs, rejoined) = std::thread::scope(|scope| {
        let leaver = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1000));
            let sent = Instant::now();
            let (status, v) = server.request(
                "DELETE",
                &format!("/v1/rooms/{room}/participants/{}", pids[1]),
                None,
            );
            let done = Instant::now();
            assert_eq!(status, 204, "{v}");
            // Finished now, not at the stop: opusinfo reads it whole within moments.
            let secs = loop {
                match opusinfo(&leaver_path) {
                    Ok(secs) => break secs,
                    Err(text) => assert!(
                        done.elapsed() < Duration::from_secs(3),
                        "the leaver's track is still open:\n{text}"
                    ),
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let (rejoined, _) =
                server.join(room, rejoin_socket.local_addr().expect("bound"), "opus");
            (sent, done, secs, rejoined)
        });
        runtime.block_on(async {
            let mut runs = Vec::new();
            for (udp, io, _remote, _) in legs.drain(..) {
                runs.push(udp.run_until(io, tokio::time::sleep(Duration::from_millis(2500))));
            }
            tokio::time::timeout(Duration::from_secs(20), serve_harness::join_all(runs))
                .await
                .expect("the clients stop on their own");
        });
        leaver.join().expect("the leaver thread")
    });
    assert_ne!(rejoined, pids[1]);
    let stop_sent = Instant::now();
    let (status, stop_body) = server.request("DELETE", &path, None);
    assert_eq!(status, 200, "{stop_body}");
    // Complete at once: read before anything else happens.
    let files: Vec<(String, f64)> = file_names(&stop_body)
        .into_iter()
        .map(|n| {
            let secs = opusinfo_seconds(&dir.join("recordings").join(&n));
            (n, secs)
        })
        .collect();
    let stop_done = Instant::now();
    println!("stop: {stop_body}");
    assert_eq!(
        files.len(),
        4,
        "mix, two tracks and the rejoiner's: {stop_body}"
    );
    // The leaver's track: the time from the recording's start to the leave, each known
    // to lie between a request's sending and its answer; within a frame of that.
    let (short, long) = (
        (leave_sent - post_done).as_secs_f64(),
        (leave_done - post_sent).as_secs_f64(),
    );
    println!("{leaver_track}: {leaver_secs:.3} s, in the room {short:.3}..{long:.3} s");
    assert!(
        leaver_secs >= short - TICK_SLACK_S && leaver_secs <= long + TICK_SLACK_S,
        "{leaver_secs:.3} s for {short:.3}..{long:.3} s in the room"
    );
    let (short, long) = (
        (stop_sent - post_done).as_secs_f64(),
        (stop_done - post_sent).as_secs_f64(),
    );
    for (name, secs) in &files {
        println!("{name}: {secs:.3} s by opusinfo");
        if *name == leaver_track {
            // As read right after the leave: the file did not change since.
            assert_eq!(*secs, leaver_secs, "{name}");
        } else {
            // The mix, the stayer and the rejoiner (padded from the start) run on.
            assert!(
                *secs >= short - TICK_SLACK_S && *secs <= long + TICK_SLACK_S,
                "{name}: {secs:.3} s for {short:.3}..{long:.3} s of recording"
            );
        }
    }
    assert!(
        files
            .iter()
            .any(|(n, _)| n.ends_with(&format!("-p{rejoined}.opus")))
    );
    // The mix holds the leaver's speech only until the leave, the stayer's throughout.
    let mix = files
        .iter()
        .find(|(n, _)| n.ends_with("-mix.opus"))
        .expect("the mix");
    let pcm = opusdec(&dir.join("recordings").join(&mix.0));
    let a = aligned_correlation(&sources[0], &pcm);
    assert!(a.mean > 0.45, "the mix lacks the stayer: {a:?}");
    assert_eq!(server.metric("confer_recording_frames_dropped_total"), 0.0);
    assert_eq!(server.metric("confer_recording_errors_total"), 0.0);
    assert!(server.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deleting_a_recording_room_answers_once_its_files_are_complete() {
    let dir = data_dir("delete");
    let server = Server::start(
        5,
        4,
        &[("CONFER_DATA_DIR", dir.to_str().expect("utf-8 temp dir"))],
    );
    let room = server.create_room(r#"{"name":"rec-delete"}"#);
    let post_sent = Instant::now();
    let (status, v) = server.request("POST", &format!("/v1/rooms/{room}/recording"), Some("{}"));
    let post_done = Instant::now();
    assert_eq!(status, 201, "{v}");
    let names = file_names(&v);
    std::thread::sleep(Duration::from_millis(500));
    let delete_sent = Instant::now();
    let (status, v) = server.request("DELETE", &format!("/v1/rooms/{room}"), None);
    assert_eq!(status, 204, "{v}");
    // Read at once: the answer waited for the file.
    let secs = opusinfo_seconds(&dir.join("recordings").join(&names[0]));
    let delete_done = Instant::now();
    let (short, long) = (
        (delete_sent - post_done).as_secs_f64(),
        (delete_done - post_sent).as_secs_f64(),
    );
    println!("{}: {secs:.3} s for {short:.3}..{long:.3} s", names[0]);
    assert!(
        secs >= short - TICK_SLACK_S && secs <= long + TICK_SLACK_S,
        "{secs:.3} s for {short:.3}..{long:.3} s"
    );
    assert!(server.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
