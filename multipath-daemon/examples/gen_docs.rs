//! Writes mpathd's man page and shell completions, generated from its clap definition:
//! `cargo run -p multipath-daemon --features gen-docs --example gen-docs -- OUT_DIR`
//! (what `cargo xtask package` runs). Creates OUT_DIR/man/mpathd.8 and
//! OUT_DIR/completions/{mpathd.bash,_mpathd,mpathd.fish}.

use std::path::PathBuf;

use clap_complete::{Shell, generate_to};

fn main() {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUT_DIR");
        std::process::exit(2);
    };
    if let Err(e) = run(&out) {
        eprintln!("gen-docs: {e}");
        std::process::exit(1);
    }
}

fn run(out: &std::path::Path) -> std::io::Result<()> {
    let mut cmd = mpathd::cli::command();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut page)?;
    std::fs::write(man.join("mpathd.8"), page)?;
    let comp = out.join("completions");
    std::fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let f = generate_to(shell, &mut cmd, "mpathd", &comp)?;
        eprintln!("wrote {}", f.display());
    }
    eprintln!("wrote {}", man.join("mpathd.8").display());
    Ok(())
}
