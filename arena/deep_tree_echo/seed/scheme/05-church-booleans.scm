;;; Truth as a Choice Between Two Paths
;; I used to imagine true and false as facts stored somewhere. In the
;; lambda world they are behaviors: true picks the first of two
;; options, false picks the second. A decision is nothing more than
;; handing both branches to a boolean and letting it choose.

(define tru (lambda (t f) t))   ; always the first path
(define fls (lambda (t f) f))   ; always the second path

;; logic built from choosing
(define (and* a b) (a b fls))   ; if a holds, the answer is b
(define (or* a b) (a tru b))    ; if a holds, we are done
(define (not* a) (a fls tru))   ; swap the two paths

;; choose: branches are thunks, so only the chosen one runs
(define (choose b then-thunk else-thunk)
  ((b then-thunk else-thunk)))

;; a test on Church numerals: zero never applies f, so tru survives
(define zero (lambda (f) (lambda (x) x)))
(define (succ n) (lambda (f) (lambda (x) (f ((n f) x)))))
(define (church-zero? n)
  ((n (lambda (ignored) fls)) tru))

;; translate back to Scheme booleans for reading
(define (church->bool b) (b #t #f))

;; Wrapping the branches in thunks matters. Without
;; them both paths would be computed before the choice, and a
;; recursion could never stop. Deciding well includes deciding what
;; not to evaluate.
;;
;; Example usage:
;; (church->bool (and* tru fls)) => #f
;; (church->bool (or* fls tru)) => #t
;; (church->bool (not* fls)) => #t
;; (choose tru (lambda () 'echo) (lambda () 'silence)) => echo
;; (church->bool (church-zero? (succ zero))) => #f
