//! wisp-echo: a tiny container service and test program, with the standard library only.
//!
//! - `wisp-echo` (or `serve`): HTTP/1.1 (keep-alive) on `$PORT` (8080). `GET /env/NAME` answers
//!   that variable; any other path answers `echo from <HOSTNAME>: <MESSAGE> <path>`.
//! - `exit CODE LINE`: prints LINE on stdout and stderr, exits with CODE.
//! - `sleep LINE`: prints LINE, then runs until stopped.
//! - `spin`: keeps one core busy until stopped.
//! - `connect HOST:PORT`: tries a TCP connection for 2 s; exit 0 when it connects.
//! - `alloc MIB`: allocates and touches MIB mebibytes, prints `allocated`, runs on.
//! - `listen SECS`: accepts (and closes) TCP connections on `$PORT` for SECS seconds, then
//!   closes the port and runs on (a readiness probe sees it go away).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "" | "serve" => serve(),
        "exit" => {
            println!("{}", arg(2));
            eprintln!("{}", arg(2));
            std::process::exit(arg(1).parse().unwrap_or(1));
        }
        "sleep" => {
            println!("{}", arg(1));
            forever();
        }
        "spin" => {
            println!("spinning");
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "connect" => {
            let ok = arg(1)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)));
            match ok {
                Some(Ok(_)) => println!("connected to {}", arg(1)),
                Some(Err(e)) => {
                    println!("cannot connect to {}: {e}", arg(1));
                    std::process::exit(1);
                }
                None => {
                    println!("cannot resolve {}", arg(1));
                    std::process::exit(2);
                }
            }
        }
        "listen" => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
            let listener = TcpListener::bind(format!("0.0.0.0:{port}")).unwrap_or_else(|e| {
                eprintln!("cannot listen on {port}: {e}");
                std::process::exit(1)
            });
            let secs: u64 = arg(1).parse().unwrap_or(5);
            let until = std::time::Instant::now() + Duration::from_secs(secs);
            let _ = listener.set_nonblocking(true);
            println!("listening on {port} for {secs} s");
            while std::time::Instant::now() < until {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(listener);
            println!("closed port {port}");
            forever();
        }
        "alloc" => {
            let mib: usize = arg(1).parse().unwrap_or(64);
            let mut held = Vec::new();
            for _ in 0..mib {
                held.push(vec![1u8; 1 << 20]);
            }
            println!("allocated {} MiB", held.len());
            forever();
        }
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(64);
        }
    }
}

fn forever() -> ! {
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn serve() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).unwrap_or_else(|e| {
        eprintln!("cannot listen on {port}: {e}");
        std::process::exit(1)
    });
    println!("listening on {port}");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let _ = handle(conn);
        });
    }
}

fn handle(conn: TcpStream) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let message = std::env::var("MESSAGE").unwrap_or_else(|_| "hello".into());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut length, mut close) = (0usize, request_line.ends_with("HTTP/1.0\r\n"));
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        let (status, body) = match path.strip_prefix("/env/") {
            Some(name) => match std::env::var(name) {
                Ok(v) => ("200 OK", v),
                Err(_) => ("404 Not Found", format!("{name} is not set")),
            },
            None => ("200 OK", format!("echo from {host}: {message} {path}")),
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        )?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}
