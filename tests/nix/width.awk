# Lines of a .nix file wider than nixfmt's 100 columns that nixfmt would have wrapped. nixfmt
# never splits a string, so a line holding one string (`key = "…";`, `"…"`) may be longer,
# and so may the contents of an indented string (''…'').
function delimiters(s, inside,   t) {
  t = s
  # Outside an indented string, '' within "…" delimits nothing; ''' is an escape.
  if (!inside) gsub(/"([^"\\]|\\.)*"/, "", t)
  gsub(/'''/, "", t)
  return gsub(/''/, "", t)
}
{
  line = $0
  starts_inside = inside
  if (delimiters(line, inside) % 2 == 1) inside = !inside
  if (length(line) <= 100 || (starts_inside && inside)) next
  if (line ~ /^[ \t]*([A-Za-z0-9_.'"-]+[ \t]*=[ \t]*)?".*"[ \t]*[;,]?[ \t]*$/) next
  printf "%s:%d: %d columns, over nixfmt's 100\n", FILENAME, FNR, length(line)
  bad = 1
}
END { exit bad }
