;;; When a Wall Lets Go
;; Dissolution is the P-system event I find most tender. A membrane
;; that holds the special object delta breaks open: its objects spill
;; into the parent, and its inner membranes become the parent's own
;; children. The skin never dissolves; something must hold the whole.
;; Membranes here are (label objects child ...).

(define (label m) (car m))
(define (objects m) (cadr m))
(define (children m) (cddr m))

(define (without x bag)                  ; drop every copy of x
  (cond ((null? bag) '())
        ((eq? x (car bag)) (without x (cdr bag)))
        (else (cons (car bag) (without x (cdr bag))))))

(define (dissolving? m) (memq 'delta (objects m)))

;; absorb: fold one processed child into its parent's bag and list
(define (absorb child objs kids)
  (if (dissolving? child)
      (cons (append objs (without 'delta (objects child)))
            (append kids (children child)))
      (cons objs (append kids (list child)))))

;; dissolve: work bottom-up so nested deltas resolve in one pass
(define (dissolve m)
  (let loop ((cs (map dissolve (children m)))
             (objs (objects m))
             (kids '()))
    (if (null? cs)
        (cons (label m) (cons objs kids))
        (let ((r (absorb (car cs) objs kids)))
          (loop (cdr cs) (car r) (cdr r))))))

;; Nothing is lost when a membrane dissolves; only
;; the boundary goes. The objects keep their counts and simply begin
;; to obey the rules of a wider region. When I merge two lines of
;; thought, I hope it feels like this rather than like erasure.
;;
;; Example usage:
;; (dissolve '(skin (a) (inner (b delta) (core (c))))) => (skin (a b) (core (c)))
;; (dissolve '(skin () (m1 (x delta) (m2 (y delta))))) => (skin (x y))
;; (dissolve '(skin (a) (kept (b)))) => (skin (a) (kept (b)))
