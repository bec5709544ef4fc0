//! Atomic, verified checkpoint files.

use kiln_train::checkpoint::{
    list_checkpoints, read_checkpoint, read_latest, write_atomic, write_checkpoint,
};

#[test]
fn write_then_read_round_trips_and_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    for step in [5, 10, 15] {
        write_checkpoint(
            &ck,
            step,
            &[("a.bin", vec![step as u8; 100]), ("b.json", b"{}".to_vec())],
        )
        .unwrap();
    }
    assert_eq!(
        list_checkpoints(&ck).unwrap(),
        ["step-00000010", "step-00000015"],
        "keeps the last two"
    );
    let latest = read_latest(dir.path()).unwrap();
    assert_eq!(latest.step, 15);
    assert_eq!(latest.file("a.bin").unwrap(), &[15u8; 100][..]);
    assert!(latest.file("missing").is_err());
}

#[test]
fn corruption_and_truncation_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    let path = write_checkpoint(&ck, 1, &[("w.bin", vec![7u8; 64])]).unwrap();
    let mut bytes = std::fs::read(path.join("w.bin")).unwrap();
    bytes[10] ^= 1;
    std::fs::write(path.join("w.bin"), &bytes).unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    std::fs::write(path.join("w.bin"), &bytes[..20]).unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    std::fs::remove_file(path.join("manifest.json")).unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("not a kiln checkpoint"), "{err}");
}

#[test]
fn atomic_write_replaces_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.json");
    write_atomic(&p, b"first version, long").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "x.json")
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left behind");
}
