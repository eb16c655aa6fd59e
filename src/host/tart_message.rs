//! Reading Tart's own words out of what it printed.
//!
//! Tart prints its error on stderr, bare or after `Error: `, and a usage error adds a
//! `Usage:` block after it. Before every command but `pull` and `clone` it also garbage-
//! collects `$TART_HOME/tmp`, and when another Tart process removed an entry meanwhile it
//! prints `Failed to perform garbage collection: …` first and carries on. So the message
//! is the error line, wherever it is, never a line of housekeeping noise.

/// The prefix of Tart's warning when its housekeeping of `$TART_HOME/tmp` failed.
const GC_WARNING: &str = "Failed to perform garbage collection:";

/// Whether `line` is Tart's housekeeping warning rather than the command's own output.
pub fn is_noise(line: &str) -> bool {
    line.trim_start().starts_with(GC_WARNING)
}

/// Tart's message in `text`, without its `Error: ` prefix: the first `Error: ` line if
/// there is one, else the first line that is not housekeeping noise.
pub fn error_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_noise(l))
        .collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("Error: "))
        .or(lines.first())
        .copied()
        .unwrap_or("");
    line.strip_prefix("Error: ").unwrap_or(line).to_string()
}

/// The lines of a log that are Tart's output, without housekeeping noise.
pub fn meaningful_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_noise(l))
        .collect()
}

/// How `tart run` ended, with what to do when Softnet (the isolation between concurrent
/// jobs' VMs) was the reason.
pub fn explain(tart_run_ending: String) -> String {
    if !tart_run_ending.to_ascii_lowercase().contains("softnet") {
        return tart_run_ending;
    }
    format!("{tart_run_ending}. Softnet isolates concurrent jobs' VMs and needs the `softnet` binary on gitlab-runner's PATH, setuid root (`sudo chown root $(which softnet) && sudo chmod u+s $(which softnet)`) or allowed by passwordless sudo; the nix-darwin module sets this up. To run jobs without isolation, set --no-softnet")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GC: &str = "Failed to perform garbage collection: Failed(\"failed to lock file:///Users/admin/.tart/tmp/0F2A/: Bad file descriptor\")";

    #[test]
    fn the_error_line_is_found_after_a_garbage_collection_warning() {
        assert_eq!(
            error_line(&format!("{GC}\nno IP address found, is your VM running?\n")),
            "no IP address found, is your VM running?"
        );
        assert_eq!(
            error_line(&format!("{GC}\nVM \"x\" is not running\n")),
            "VM \"x\" is not running"
        );
    }

    #[test]
    fn a_usage_error_gives_its_error_line_not_the_usage_block() {
        let text = format!("{GC}\nError: Nested virtualization is available for Mac with the M3 chip, and later.\nUsage: tart run [<options>] <name>\n  See 'tart run --help' for more information.\n");
        assert_eq!(
            error_line(&text),
            "Nested virtualization is available for Mac with the M3 chip, and later."
        );
    }

    #[test]
    fn a_bare_message_is_taken_as_it_is() {
        assert_eq!(
            error_line("the specified VM \"x\" does not exist\n"),
            "the specified VM \"x\" does not exist"
        );
        assert_eq!(error_line(""), "");
        assert_eq!(error_line(GC), "");
    }
}
