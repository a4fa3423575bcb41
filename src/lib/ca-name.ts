/** How everything shown to people names a CA, one capitalisation everywhere: "User CA", "Host CA". */
export const caName = (kind: string): string => `${kind.charAt(0).toUpperCase()}${kind.slice(1)} CA`;
