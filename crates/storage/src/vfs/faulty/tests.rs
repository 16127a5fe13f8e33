//! Tests of the crash model.

use super::*;

fn read_all(fs: &dyn FileSystem, p: &str) -> Vec<u8> {
    let f = fs.open_read(Path::new(p)).unwrap();
    let mut buf = vec![0u8; f.len().unwrap() as usize];
    f.read_at(0, &mut buf).unwrap();
    buf
}

#[test]
fn crash_drops_unsynced_bytes_and_names() {
    let fs = FaultyFs::over_mem(1);
    fs.create_dir_all(Path::new("/d")).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    let f = fs.create(Path::new("/d/a")).unwrap();
    f.append(b"durable").unwrap();
    f.sync().unwrap();
    fs.sync_dir(Path::new("/d")).unwrap();
    f.append(b" lost").unwrap();
    let g = fs.create(Path::new("/d/b")).unwrap();
    g.append(b"x").unwrap();
    g.sync().unwrap(); // data synced but its name is not
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert_eq!(read_all(&fs, "/d/a"), b"durable");
    assert!(!fs.exists(Path::new("/d/b")));
    assert!(f.append(b"dead handle").is_err());
}

#[test]
fn unsynced_rename_is_undone_and_synced_rename_kept() {
    let fs = FaultyFs::over_mem(2);
    fs.create_dir_all(Path::new("/d")).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    let f = fs.create(Path::new("/d/tmp")).unwrap();
    f.append(b"v1").unwrap();
    f.sync().unwrap();
    fs.sync_dir(Path::new("/d")).unwrap();
    fs.rename(Path::new("/d/tmp"), Path::new("/d/final"))
        .unwrap();
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert!(fs.exists(Path::new("/d/tmp")));
    assert!(!fs.exists(Path::new("/d/final")));
    fs.rename(Path::new("/d/tmp"), Path::new("/d/final"))
        .unwrap();
    fs.sync_dir(Path::new("/d")).unwrap();
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert_eq!(read_all(&fs, "/d/final"), b"v1");
    assert_eq!(
        fs.list(Path::new("/d")).unwrap(),
        vec![PathBuf::from("/d/final")]
    );
}

#[test]
fn unsynced_directory_disappears() {
    let fs = FaultyFs::over_mem(3);
    fs.create_dir_all(Path::new("/x/y")).unwrap();
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert!(!fs.exists(Path::new("/x")));
}

#[test]
fn power_cut_and_scheduled_faults() {
    let fs = FaultyFs::over_mem(4);
    fs.create_dir_all(Path::new("/d")).unwrap(); // op 1
    let f = fs.create(Path::new("/d/a")).unwrap(); // op 2
    fs.schedule_fault(3, Fault::Error);
    assert!(f.append(b"abc").is_err()); // op 3
    assert_eq!(f.len().unwrap(), 0);
    fs.schedule_fault(4, Fault::TornWrite);
    assert!(f.append(b"abcdef").is_err()); // op 4
    assert!(f.len().unwrap() < 6);
    fs.crash_after_op(Some(5));
    f.set_len(0).unwrap(); // op 5
    assert!(fs.is_power_cut());
    assert!(f.append(b"x").is_err());
    assert!(fs.sync_dir(Path::new("/d")).is_err());
    assert_eq!(fs.op_count(), 5);
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert!(!fs.is_power_cut());
    assert!(!fs.exists(Path::new("/d")));
}

#[test]
fn keep_random_prefix_keeps_a_prefix() {
    for seed in 0..20 {
        let fs = FaultyFs::over_mem(seed);
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let f = fs.create(Path::new("/d/a")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.append(b"0123").unwrap();
        f.sync().unwrap();
        f.append(b"456789").unwrap();
        fs.crash(CrashMode::KeepRandomPrefix).unwrap();
        let got = read_all(&fs, "/d/a");
        assert!(got.len() >= 4 && b"0123456789".starts_with(&got));
    }
}

#[test]
fn works_over_os_fs_in_a_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(Arc::new(super::super::OsFs), 5);
    let d = tmp.path().join("w");
    fs.create_dir_all(&d).unwrap();
    fs.sync_dir(tmp.path()).unwrap();
    let f = fs.create(&d.join("a")).unwrap();
    f.append(b"hello").unwrap();
    f.sync().unwrap();
    fs.sync_dir(&d).unwrap();
    f.append(b"!").unwrap();
    fs.crash(CrashMode::DropUnsynced).unwrap();
    assert_eq!(std::fs::read(d.join("a")).unwrap(), b"hello");
}

/// Every file under `dir`, recursively, with its bytes.
fn tree(fs: &dyn FileSystem, dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for p in fs.list(dir).unwrap() {
        if fs.is_dir(&p) {
            out.push((p.clone(), None));
            out.extend(tree(fs, &p));
        } else {
            out.push((p.clone(), Some(read_all(fs, p.to_str().unwrap()))));
        }
    }
    out
}

#[test]
fn crash_image_is_what_a_crash_leaves() {
    for seed in 0..10 {
        let fs = FaultyFs::over_mem(seed);
        fs.create_dir_all(Path::new("/d/e")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        if seed % 2 == 0 {
            fs.sync_dir(Path::new("/d")).unwrap();
        }
        let a = fs.create(Path::new("/d/e/a")).unwrap();
        a.append(b"one").unwrap();
        a.sync().unwrap();
        fs.sync_dir(Path::new("/d/e")).unwrap();
        a.append(b" two").unwrap();
        if seed % 3 == 0 {
            fs.rename(Path::new("/d/e/a"), Path::new("/d/b")).unwrap();
        }
        let image = fs.crash_image(CrashMode::DropUnsynced).unwrap();
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert_eq!(
            tree(&image, Path::new("/")),
            tree(&fs, Path::new("/")),
            "seed {seed}"
        );
    }
}
