//! A panicking handler costs its connection, never a worker.

mod util;

use std::io::Write;

use pool_manager::{Config, Conn, Manager};
use util::*;

#[test]
fn a_handler_panic_closes_the_connection_and_the_worker_goes_on() {
    init_log();
    let manager = Manager::new(
        Config::default().with_max_workers(1),
        |conn: &mut Conn<'_>, data: &[u8]| {
            if data.starts_with(b"boom") {
                panic!("handler asked to panic");
            }
            conn.write_all(data)
        },
    )
    .unwrap();
    manager.start().unwrap();
    let lo = Loopback::new();

    for round in 1..=3u64 {
        let mut c = lo.put(&manager);
        roundtrip(&mut c, b"ok", b"ok");
        c.write_all(b"boom").unwrap();
        assert_eq!(read_to_close(&mut c).unwrap(), b"");
        let s = wait_stats(&manager, "the panic to be counted", |s| {
            s.closed.panic == round && s.idle == 1
        });
        assert_eq!(s.workers, 1, "the pool did not shrink");
        assert_eq!(s.workers_spawned, 1, "the same worker goes on");
    }
    // And it still serves.
    let mut c = lo.put(&manager);
    roundtrip(&mut c, b"after", b"after");
}
