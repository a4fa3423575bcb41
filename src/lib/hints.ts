/**
 * How to start a daemon with a new token, laid out as deploy/systemd/mezd-identity@.service runs it:
 * the token in a file (an argument shows in ps), the outputs in the unit's one writable dir.
 * mezctl and the dashboard print the same lines.
 */
export function identityStartHint(addr: string, name: string): string[] {
  return [
    `mezd identity start --auth-server=${addr} --token-file=/etc/mezite/identity/${name}.token --destination-dir=/var/lib/mezite-identity/${name}`,
    `(under systemd: those three keys in /etc/mezite/identity/${name}.yaml, then systemctl enable --now mezd-identity@${name})`,
  ];
}
