#!/usr/bin/env node
console.log("quickstart: not built yet (the auth service lands with issue 3)");
